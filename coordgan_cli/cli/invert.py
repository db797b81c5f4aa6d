"""``coordgan invert [CKPT] INPUT --out maps.h5``: correspondence maps of real images into an HDF5 store
(without CKPT: the shipped model, or --model NAME).

Also ``coordgan invert --merge a.h5 b.h5 … --out all.h5`` to join shards.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from coordgan_cli.cli._common import get_state, info, make_progress, print_json, warn
from coordgan_cli.errors import UserError

HELP = """Correspondence maps of real images (structure path: encoder + warp MLP, never the generator)
into the shared HDF5 store (source = "model"; row names = paths relative to INPUT, POSIX).

\b
INPUT is a folder (recursive, sorted), a text file of image paths (relative to the file), or -
for paths on stdin (relative to the working folder). Without CKPT the shipped CoordGAN model
maps them (or --model NAME; `coordgan models` lists what this build ships).
\b
Resumable: rerun the same command after an interruption (even kill -9); finished names are
skipped and the result equals an uninterrupted run.
\b
Several processes / machines:
  coordgan invert CKPT DIR --out part0.h5 --shard 0/2      (every 2nd image from the 1st)
  coordgan invert CKPT DIR --out part1.h5 --shard 1/2
  coordgan invert --merge part0.h5 part1.h5 --out maps.h5  (rows sorted by name)
or on one machine: torchrun --nproc_per_node=N -m coordgan_cli invert CKPT DIR --out maps.h5
(each rank writes maps.rank{r}.h5, then rank 0 merges them into maps.h5).
"""


def invert_command(
    ctx: typer.Context,
    args: Optional[List[str]] = typer.Argument(None, metavar="[CKPT] INPUT | STORES...",
                                               help="An encoder checkpoint and the images (INPUT alone: the shipped "
                                               "model); with --merge, the stores to join."),
    model_name: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see "
                                             "`coordgan models`) instead of CKPT."),
    out: Path = typer.Option(..., "--out", help="The store to write (.h5); resumed if it exists."),
    size: Optional[str] = typer.Option(None, "--size", help="Map size N (or HxW); default: the model's canonical size."),
    full: bool = typer.Option(False, "--full", help="Also store structure/texture codes and write reconstructions to <out>_reconstructions/."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per forward pass."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: take every n-th input image starting at i (0-based)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write thumbnail + colour-coded map PNGs (x red, y green) here."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable image (default: skip and record it)."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 (half the disk) or float32 maps."),
    workers: int = typer.Option(2, "--workers", min=1, help="Image-decoding threads."),
    merge: bool = typer.Option(False, "--merge", help="Join the given shard stores into --out instead of inverting."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    state = get_state(ctx)
    args = list(args or [])
    if merge:
        _merge(args, out, state, as_json)
        return
    ckpt, source = _model_and_input(args, model_name, state)
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype {dtype!r}: use float16 or float32")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"--out {out}: the store must be an .h5 file")

    from coordgan_cli.inference import load_correspondence_model
    from coordgan_cli.inversion import invert_to_store, parse_shard, parse_size
    from coordgan_cli.io.images import IMAGE_EXTENSIONS, read_path_list
    from coordgan_cli.io.paths import output_file, output_folder, removed_on_failure

    shard_spec = parse_shard(shard) if shard else None
    device = state.torch_device()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and shard_spec is not None:
        raise UserError("--shard cannot be combined with torchrun (each rank already takes its own shard)")
    if world > 1:
        from coordgan_cli.training.distributed import setup, teardown
    else:
        setup, teardown = _single_process, lambda d: None
    root, paths = read_path_list(source)
    if not paths:
        raise UserError(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, hidden "
                        "files skipped); nothing to invert")
    output_file(out)
    if preview is not None:
        output_folder(preview)
    dist = setup(device)
    try:
        model = load_correspondence_model(ckpt, dist.device)
        map_size = parse_size(size, model.map_size)
        target = out
        if dist.active:
            shard_spec = (dist.rank, dist.world_size)
            target = out.with_name(f"{out.stem}.rank{dist.rank}{out.suffix}")
        quiet = state.quiet or not dist.is_main
        if not quiet:
            info(f"invert: {len(paths)} input(s) → {out} at {map_size[0]}×{map_size[1]}"
                 f"{' (full: codes + reconstructions)' if full else ' (structure path)'} on {dist.device}", state)
        with make_progress(state if not quiet else type(state)(quiet=True), unit="img") as progress:
            task = progress.add_task("invert", total=None, rate="")
            t0 = time.perf_counter()
            def on_progress(advance: int, written: int) -> None:
                rate = written / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=advance, rate=f"{rate:.1f} images/s")

            def on_skip(entry: dict) -> None:
                if not quiet:
                    warn(f"skipped {entry['path']}: {entry['reason']}")

            # A store this run creates is removed again if it fails before storing a row.
            with removed_on_failure(target, lambda: stored_rows(target) > 0):
                summary = invert_to_store(
                    model, paths, root, target, size=map_size, full=full, batch_size=batch_size, shard=shard_spec,
                    preview=preview, strict=strict, dtype=dtype, workers=workers,
                    on_total=lambda n: progress.update(task, total=n), progress=on_progress, on_skip=on_skip,
                )
        result = summary.to_json()
        if dist.active:
            # Totals over all ranks (the mean times the number of ranks).
            totals = dist.average_scalars({"count": float(summary.written), "already_done": float(summary.already_done),
                                           "inputs": float(summary.inputs)})
            for key, value in totals.items():
                result[key] = int(round(value * dist.world_size))
            if dist.is_main:
                from coordgan_cli.inversion import merge_stores, sidecar_path

                parts = [out.with_name(f"{out.stem}.rank{r}{out.suffix}") for r in range(dist.world_size)]
                result["rows"] = merge_stores(parts, out)
                for p in parts:
                    p.unlink(missing_ok=True)
                    sidecar_path(p).unlink(missing_ok=True)
                merged_side = sidecar_path(out)
                result["skipped"] = json.loads(merged_side.read_text())["skipped"] if merged_side.is_file() else []
                result["out"] = str(out)
                result["ranks"] = dist.world_size
                result["shard"] = None
            dist.barrier()
    finally:
        teardown(dist)
    if not dist.is_main:
        return
    if as_json:
        print_json(result)
    else:
        info(f"invert: wrote {result['count']} map(s) in {result['seconds']:.1f} s "
             f"({result['images_per_second'] or 0:.1f} images/s); {result['rows']} row(s) in {out}"
             + (f"; {result['already_done']} already done" if result["already_done"] else "")
             + (f"; {len(result['skipped'])} skipped (listed in {out.stem}.skipped.json)" if result["skipped"] else ""),
             state)


def _model_and_input(args: list[str], model: Optional[str], state) -> tuple[Path, str]:
    """(checkpoint, INPUT) from ``CKPT INPUT``, ``--model NAME INPUT`` or ``INPUT`` (the shipped default model)."""
    from coordgan_cli.inference import NO_MODEL, is_default_model, resolve_model

    if len(args) == 2:
        if model is not None:
            raise UserError(f"--model {model} and a checkpoint ({args[0]}) both given: pass one of them, then INPUT")
        return resolve_model(args[0]), args[1]
    if len(args) != 1:
        raise UserError("invert needs INPUT, or CKPT INPUT (or --merge STORES... --out OUT); see coordgan invert --help")
    if args[0].endswith(".pt") and Path(args[0]).is_file():
        raise UserError(f"{args[0]} looks like a checkpoint: invert needs INPUT after it (a folder, a list of paths or -)")
    try:
        path = resolve_model(None, model)
    except UserError as exc:
        if exc.message == NO_MODEL:
            raise UserError("invert needs CKPT INPUT (or --model NAME INPUT); this build ships no CoordGAN model to "
                            "use by default") from exc
        raise
    if is_default_model(path):
        info(f"invert: the shipped model {path.stem!r} ({path}); give CKPT or --model to choose another", state)
    return path, args[0]


def stored_rows(path: Path) -> int:
    """Complete rows of a store (0 when it is unreadable)."""
    from coordgan_cli.io.store import StoreReader

    try:
        reader = StoreReader(path)
    except (UserError, OSError):
        return 0
    try:
        return len(reader.names)
    finally:
        reader.close()


def _single_process(device):
    from types import SimpleNamespace

    return SimpleNamespace(rank=0, world_size=1, device=device, active=False, is_main=True, barrier=lambda: None)


def _merge(args: list[str], out: Path, state, as_json: bool) -> None:
    from coordgan_cli.inversion import merge_stores

    if not args:
        raise UserError("--merge needs the shard stores to join: coordgan invert --merge a.h5 b.h5 --out all.h5")
    from coordgan_cli.io.paths import output_file

    output_file(out)
    t0 = time.perf_counter()
    rows = merge_stores([Path(a) for a in args], out)
    seconds = time.perf_counter() - t0
    if as_json:
        print_json({"out": str(out), "rows": rows, "sources": args, "seconds": round(seconds, 3)})
    else:
        info(f"merged {len(args)} store(s) into {out}: {rows} row(s)", state)


def register(app: typer.Typer) -> None:
    app.command("invert", help=HELP)(invert_command)
