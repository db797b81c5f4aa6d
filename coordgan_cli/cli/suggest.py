"""``coordgan suggest``: which images to annotate — the first references, and the next ones.

First round: describe every image (a pretrained backbone's global descriptor — by default the
offline Inception-v3's pool features, --backbone NAME --backbone-weights FILE for another from
the registry the real-photo matchers use — or the CoordGAN encoder's structure code with --ckpt), pick the K medoids (``selection.select.representatives``)
or the K farthest-first images, and write ``suggested.txt`` + a contact sheet + ``suggested.json``.

Next round (``--from-run OUT``): read the per-image confidence a finished ``coordgan propagate``
recorded in ``OUT/progress.jsonl`` and pick the images whose labels are least certain and least
like the current references (``selection.select.next_round``). The queries and references come
from ``OUT/run.json`` (written by the run), so IMAGES and --refs may be left out.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from coordgan_cli.cli._common import AppState, get_state, info, make_progress, print_json, warn
from coordgan_cli.errors import UserError
from coordgan_cli.labelling.progress import PROGRESS  # the run records `coordgan propagate` writes

METHODS = ("kmedoids", "farthest")
DEFAULT_BACKBONE = "inception"  # the shipped Inception-v3 (nothing downloads)


# ---------------------------------------------------------------------------------------------
# Inputs


def _read_list(path: Path, what: str) -> list[str]:
    """Lines of a path list (first whitespace/comma-separated field; '#' comments, blanks skipped).

    Accepts ``suggested.txt``, a plain path list, or propagate's --refs pairs file ('image mask')."""
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} must be a UTF-8 text file of image paths") from exc
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line.replace(",", " ").replace("\t", " ").split(" ")[0])
    return entries


def _locate(entries: list[str], base: Optional[Path], root: Optional[Path], names: dict[str, int],
            resolved: dict[Path, int], where: str) -> tuple[list[int], list[Path]]:
    """Entries → (indices of images in the folder, existing files outside it).

    An entry is a path (absolute, or relative to ``base``), or a name relative to the image folder.
    """
    inside: list[int] = []
    outside: list[Path] = []
    for entry in entries:
        candidates = [Path(entry)] if Path(entry).is_absolute() else \
            [p for p in ((base / entry) if base else None, (root / entry) if root else None) if p is not None]
        index = next((resolved[c.resolve()] for c in candidates if c.resolve() in resolved), None)
        if index is None:
            index = names.get(entry)
        if index is not None:
            inside.append(index)
            continue
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            hint = "; pass the run's --refs file" if where.endswith("report.html") else ""
            raise UserError(f"{where}: {entry!r} is neither an image of the folder nor an existing file{hint}")
        outside.append(found)
    return sorted(set(inside)), list(dict.fromkeys(outside))


def read_run(out: Path) -> dict[str, dict[str, float]]:
    """name → {"mean_confidence", "low_fraction"} from a propagate output folder's progress.jsonl."""
    path = out / PROGRESS
    if not out.is_dir():
        raise UserError(f"{out}: --from-run folder not found")
    if not path.is_file():
        raise UserError(f"{out}: no {PROGRESS} — not a `coordgan propagate` output folder (or it never started)")
    records: dict[str, dict[str, float]] = {}
    with open(path, "rb") as handle:
        for line in handle:
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a line torn by a killed run
            if isinstance(rec, dict) and "name" in rec and "mean_confidence" in rec:
                records[rec["name"]] = {"mean_confidence": float(rec["mean_confidence"]),
                                        "low_fraction": float(rec.get("low_fraction", float("nan")))}
    if not records:
        raise UserError(f"{path}: no labelled image recorded yet; let `coordgan propagate` finish first")
    return records


def read_run_json(out: Path) -> Optional[dict[str, Any]]:
    """A propagate run's ``OUT/run.json`` (``labelling.propagator.run_record``); None when the run
    predates it. A damaged one is a UserError naming it."""
    from coordgan_cli.labelling.propagator import RUN_FORMAT, RUN_JSON

    path = out / RUN_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a propagate run record ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise UserError(f"{path}: not a propagate run record (format is not {RUN_FORMAT!r})")
    queries = record.get("queries")
    if not isinstance(queries, dict) or not (isinstance(queries.get("source"), str)
                                             or isinstance(queries.get("paths"), list)):
        raise UserError(f"{path}: the run record names no queries")
    return record


def report_references(out: Path) -> list[str]:
    """Reference names from a propagate run's report.html summary line ('references: a, b'); [] if absent."""
    report = out / "report.html"
    if not report.is_file():
        return []
    text = report.read_text(encoding="utf-8", errors="replace")
    meta = re.search(r'<div class="meta">(.*?)</div>', text, re.S)
    if meta is None:
        return []
    for part in meta.group(1).split(" · "):
        key, _, value = html.unescape(part).partition(": ")
        if key == "references" and value:
            return [v.strip() for v in value.split(", ") if v.strip()]
    return []


# ---------------------------------------------------------------------------------------------
# The command


def suggest(
    ctx: typer.Context,
    images: Optional[str] = typer.Argument(None, help="Images to choose from: a folder, a text file of paths, or - "
                                           "(stdin). With --from-run: the images that were propagated (default: "
                                           "the run's queries, from OUT/run.json)."),
    k: int = typer.Option(..., "--k", help="Number of images to suggest."),
    out: Path = typer.Option(Path("suggested"), "--out", help="Output folder: suggested.txt, suggested.json, "
                             "contact_sheet.png."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="Images already annotated (a path list, "
                                           "suggested.txt or a --refs pairs file): never suggested, and the picks "
                                           "cover what they do not."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="A finished `coordgan propagate` output folder: "
                                            "suggest the next K images, least certain and unlike the references."),
    refs: Optional[Path] = typer.Option(None, "--refs", help="With --from-run: the run's references (its --refs "
                                        "pairs file or a path list). Default: those OUT/run.json records (or, for "
                                        "a run without one, the names in OUT/report.html)."),
    method: str = typer.Option("kmedoids", "--method", help="kmedoids (the K images that best stand for the folder) "
                               "| farthest (the K most different images; greedy max-min)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Pretrained backbone whose global descriptor "
                                           "describes the images (as the features/classifier matchers): inception "
                                           "(default, shipped), resnet18/34/50/101 (need "
                                           "--backbone-weights)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="The backbone's weights file "
                                                    "(state dict placed on disk; nothing downloads)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Describe images by this CoordGAN encoder checkpoint's "
                                        "structure code instead of a backbone's descriptor."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the k-medoids seeding (default: the root --seed)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images described per batch."),
    json_out: bool = typer.Option(False, "--json", help="Print the picks as JSON on stdout."),
) -> None:
    """Suggest which K images to annotate: the most representative ones first, or (--from-run) the
    ones whose propagated labels are least certain and least like the current references."""
    state = get_state(ctx)
    summary = run_suggest(state, images=images, k=k, out=out, exclude=exclude, from_run=from_run, refs=refs,
                          method=method, ckpt=ckpt, backbone=backbone, backbone_weights=backbone_weights,
                          seed=state.seed if seed is None else seed, batch_size=batch_size)
    if json_out:
        print_json(summary)
        return
    for i, pick in enumerate(summary["picks"], 1):
        extra = (f", confidence {pick['mean_confidence']:.3f}" if "mean_confidence" in pick else "")
        typer.echo(f"{i}. {pick['path']}  ({pick['cluster_size']} images, {100 * pick['share']:.1f}%{extra})")
    info(f"outputs in {out}: suggested.txt, suggested.json, contact_sheet.png", state)


def run_suggest(state: AppState, *, images: Optional[str], k: int, out: Path, exclude: Optional[Path] = None,
                from_run: Optional[Path] = None, refs: Optional[Path] = None, method: str = "kmedoids",
                ckpt: Optional[Path] = None, backbone: Optional[str] = None, backbone_weights: Optional[Path] = None,
                seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """``coordgan suggest`` as a function; returns the JSON summary (also written to OUT/suggested.json)."""
    from coordgan_cli.io.atomic import atomic_write_json, atomic_write_text
    from coordgan_cli.io.contact_sheet import write_contact_sheet
    from coordgan_cli.io.images import read_image, read_path_list, relative_name
    from coordgan_cli.selection import select

    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if refs is not None and from_run is None:
        raise UserError("--refs names a propagate run's references: use it with --from-run (or use --exclude)")
    if from_run is not None and method != "kmedoids":
        raise UserError("--method chooses the first round's picks; --from-run always ranks by uncertainty × novelty")
    record = read_run_json(from_run) if from_run is not None and from_run.is_dir() else None
    if images is None and record is None:
        raise UserError("give the images to choose from (a folder, a path list or -)"
                        + (f"; {from_run} has no run.json (a run before it was written): give the images that "
                           "were propagated (its --queries)" if from_run else ""))
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"{ckpt}: --ckpt file not found")
    if ckpt is not None and (backbone is not None or backbone_weights is not None):
        raise UserError("--ckpt describes images by the encoder's structure code: leave out --backbone/--backbone-weights")
    if ckpt is None:
        from coordgan_cli.backbones import BACKBONES, backbone_names

        backbone = DEFAULT_BACKBONE if backbone is None else backbone
        if backbone not in backbone_names():
            raise UserError(f"--backbone {backbone!r} is not a backbone; choose from {', '.join(backbone_names())}")
        if backbone_weights is not None and not backbone_weights.is_file():
            raise UserError(f"{backbone_weights}: --backbone-weights file not found")
        if BACKBONES[backbone][1] and backbone_weights is None:
            raise UserError(f"--backbone {backbone} needs --backbone-weights FILE ({BACKBONES[backbone][2]}); "
                            "nothing is downloaded at run time")

    if images is not None:
        root, paths = read_path_list(images)
        list_base = None if root is None else (root if Path(images).is_dir() else Path(images).parent)
    else:  # the run's queries, read as `propagate` read them
        source = record["queries"].get("source")
        if isinstance(source, str):
            if not Path(source).exists():
                raise UserError(f"{from_run / 'run.json'}: the run's queries {source} are gone; give IMAGES")
            images = source
            root, paths = read_path_list(source)
            list_base = None if root is None else (root if Path(source).is_dir() else Path(source).parent)
        else:
            images = str(from_run / "run.json")
            root, paths, list_base = None, [Path(p) for p in record["queries"]["paths"]], None
    if not paths:
        raise UserError(f"{images}: no images found")
    names = [relative_name(p, root) for p in paths]
    by_name = {n: i for i, n in enumerate(names)}
    by_path = {p.resolve(): i for i, p in enumerate(paths)}

    fixed_in: list[int] = []
    fixed_out: list[Path] = []
    if exclude is not None:
        inside, outside = _locate(_read_list(exclude, "--exclude"), exclude.parent, list_base, by_name, by_path,
                                  str(exclude))
        fixed_in += inside
        fixed_out += outside
    run: dict[str, dict[str, float]] = {}
    if from_run is not None:
        run = read_run(from_run)
        recorded = [r["image"] for r in (record or {}).get("references", []) if isinstance(r, dict) and r.get("image")]
        if refs is not None:
            ref_entries, ref_base, where = _read_list(refs, "--refs"), refs.parent, str(refs)
        elif recorded:
            ref_entries, ref_base, where = recorded, None, str(from_run / "run.json")
        else:
            ref_entries, ref_base, where = report_references(from_run), None, str(from_run / "report.html")
            if not ref_entries:
                raise UserError(f"{from_run}: no report.html naming the references; pass the run's --refs file")
        inside, outside = _locate(ref_entries, ref_base, list_base, by_name, by_path, where)
        fixed_in += inside
        fixed_out += outside
        missing = [n for n in names if n not in run]
        if len(missing) == len(names):
            raise UserError(f"{from_run}: none of the {len(names)} images of {images} was labelled in that run "
                            "(give the same images as its --queries)")
    fixed_in = sorted(set(fixed_in))

    # ---- descriptors ------------------------------------------------------------------------
    from coordgan_cli.io.paths import output_folder
    from coordgan_cli.selection.descriptors import backbone_descriptors, structure_descriptors

    output_folder(out)  # inputs are checked; an unwritable --out is one clear error before the long part

    all_paths = list(paths) + fixed_out
    skipped: list[dict[str, str]] = []
    device = state.torch_device()
    with make_progress(state, unit="img") as progress:
        task = progress.add_task("describe", total=len(all_paths), rate="")
        kwargs = dict(device=device, batch_size=batch_size,
                      on_batch=lambda done: progress.update(task, completed=done),
                      on_skip=lambda p, reason: skipped.append({"path": str(p), "reason": reason}))
        if ckpt is None:
            descriptors, kept = backbone_descriptors(all_paths, backbone, backbone_weights, **kwargs)
        else:
            descriptors, kept = structure_descriptors(all_paths, ckpt, **kwargs)
    for s in skipped:
        warn(f"skipped {s['path']}: {s['reason']}")
    row_of = {original: row for row, original in enumerate(kept)}
    fixed_rows = [row_of[i] for i in fixed_in if i in row_of] + \
                 [row_of[len(paths) + j] for j in range(len(fixed_out)) if len(paths) + j in row_of]
    candidates = [row for row, original in enumerate(kept) if original < len(paths)]  # rows of folder images
    selectable = len(candidates) - len([r for r in fixed_rows if kept[r] < len(paths)])
    if from_run is not None:
        selectable = sum(1 for r in candidates if names[kept[r]] in run and r not in set(fixed_rows))
    if k > selectable:
        raise UserError(f"{images}: asked for {k} suggestions but only {selectable} image(s) can be suggested"
                        + (" (labelled in the run, not a reference)" if from_run is not None else
                           " (readable, not excluded)"))

    # ---- selection ----------------------------------------------------------------------------
    if from_run is None:
        pick = select.representatives if method == "kmedoids" else select.farthest_first
        chosen = pick(descriptors, k, fixed=fixed_rows, seed=seed)
    else:
        uncertainty = np.full(len(kept), np.nan)
        for row, original in enumerate(kept):
            if original < len(paths) and names[original] in run:
                uncertainty[row] = 1.0 - run[names[original]]["mean_confidence"]
        chosen = select.next_round(descriptors, uncertainty, k, fixed=fixed_rows)
    folder_count = len(candidates)
    x = select.normalise(descriptors) if from_run is not None and fixed_rows else None
    picks = []
    for row, size in zip(chosen.indices, chosen.cluster_sizes):
        original = kept[row]
        entry: dict[str, Any] = {"path": str(paths[original].resolve()), "name": names[original],
                                 "cluster_size": int(size), "share": round(size / folder_count, 6)}
        if from_run is not None:
            entry.update(run[names[original]])
            entry["distance_to_references"] = (float(np.sqrt(select._sq_dist(x[[row]], x[fixed_rows]).min()))
                                               if x is not None else None)
        picks.append(entry)

    # ---- outputs ------------------------------------------------------------------------------
    atomic_write_text(out / "suggested.txt", "".join(p["path"] + "\n" for p in picks))
    captions = []
    for i, p in enumerate(picks, 1):
        second = f"{p['cluster_size']} images ({100 * p['share']:.1f}%)"
        if from_run is not None:
            second = f"confidence {p['mean_confidence']:.3f} · " + second
        captions.append([f"#{i} {p['name']}", second])
    write_contact_sheet(out / "contact_sheet.png", [read_image(paths[kept[r]]) for r in chosen.indices], captions)
    summary: dict[str, Any] = {
        "k": k, "mode": "next-round" if from_run is not None else "first-round",
        "method": "uncertainty×novelty" if from_run is not None else method,
        "descriptor": "structure" if ckpt is not None else backbone, "seed": seed,
        "images": folder_count, "excluded": len(fixed_rows), "skipped": skipped, "picks": picks,
        "outputs": {"suggested": str(out / "suggested.txt"), "json": str(out / "suggested.json"),
                    "contact_sheet": str(out / "contact_sheet.png")},
    }
    if from_run is not None:
        summary["run"] = str(from_run)
        summary["references"] = [str(all_paths[kept[r]]) for r in fixed_rows]
    atomic_write_json(out / "suggested.json", summary)
    return summary


def register(app: typer.Typer) -> None:
    app.command("suggest")(suggest)
