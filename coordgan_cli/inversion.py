"""Folder-scale inversion: image paths → correspondence maps (and codes) in an HDF5 store.

The job behind ``coordgan invert``; the CLI only parses options and reports. Properties:

- **streaming, bounded memory**: images are decoded batch by batch (one batch read ahead by a
  small thread pool while the model works on the current one); nothing grows with the folder
  but the list of paths and the set of finished names.
- **resumable, identical to an uninterrupted run**: rows are appended in input order and the
  store's ``complete`` counter is raised only after a row is written (``io.store``). A rerun
  skips names already in the store. Batches are fixed slices of the (sharded) input list, and a
  partly finished batch is recomputed whole, so every image is always encoded together with the
  same batch mates: the maps of a killed-and-rerun job equal those of an uninterrupted one bit for
  bit.
- **sharding**: ``shard = (i, n)`` takes every n-th image starting at i (positions i, i+n, i+2n, …
  of the input list after duplicate names are dropped); :func:`merge_stores` joins shard stores
  into one whose rows are sorted by name (for a folder input, the order of a single run).
- **unreadable images** are skipped and recorded (summary and a ``<out>.skipped.json`` sidecar);
  with ``strict`` the first one stops the job (finished rows stay in the store).
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from coordgan_cli.errors import UserError
from coordgan_cli.inference import CorrespondenceModel, colourise_correspondence, tensor_to_images
from coordgan_cli.io.atomic import atomic_path, atomic_write_json
from coordgan_cli.io.images import ImageReadError, read_image, relative_name, write_image
from coordgan_cli.io.store import StoreReader, StoreWriter


@dataclass
class InvertSummary:
    """What a run did. ``written``: rows added now; ``rows``: rows in the store after the run;
    ``already_done``: inputs found finished in the store; ``skipped``: [{name, path, reason}]."""

    out: str
    rows: int = 0
    written: int = 0
    already_done: int = 0
    inputs: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    size: tuple[int, int] = (0, 0)
    full: bool = False
    shard: Optional[str] = None

    def to_json(self) -> dict:
        return {
            "out": self.out,
            "count": self.written,
            "rows": self.rows,
            "already_done": self.already_done,
            "inputs": self.inputs,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.written / self.seconds, 3) if self.seconds > 0 else None,
            "size": list(self.size),
            "full": self.full,
            "shard": self.shard,
        }


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 <= i < n."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shard i of n, counted from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def parse_size(text: Optional[str], default: int) -> tuple[int, int]:
    """``"N"`` or ``"HxW"`` → (H, W); None → (default, default)."""
    if text is None:
        return default, default
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise UserError(f"--size {text!r}: expected N or HxW (pixels)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > 8192:
        raise UserError(f"--size {text!r}: expected N or HxW with sides in 1..8192")
    return parts[0], parts[1]


def sidecar_path(out: Path) -> Path:
    """Where the list of skipped inputs of a store is kept: ``maps.h5`` → ``maps.skipped.json``."""
    return out.with_name(out.stem + ".skipped.json")


def reconstruction_dir(out: Path) -> Path:
    """``maps.h5`` → ``maps_reconstructions/``."""
    return out.with_name(out.stem + "_reconstructions")


def picture_name(name: str) -> str:
    """PNG file name for a row name: ``a/b.png`` stays, ``a/b.jpg`` → ``a/b.jpg.png`` (never collides)."""
    return name if name.lower().endswith(".png") else name + ".png"


def name_inputs(paths: Sequence[Path], root: Optional[Path]) -> tuple[list[tuple[str, Path]], list[dict]]:
    """Row names for input paths (relative to ``root``, POSIX; stdin lists use the working folder).

    A second path with the same name is not an input but a skipped entry (reason given).
    """
    base = root if root is not None else Path.cwd()
    seen: set[str] = set()
    items: list[tuple[str, Path]] = []
    skipped: list[dict] = []
    for p in paths:
        name = relative_name(p, base)
        if name in seen:
            skipped.append({"name": name, "path": str(p), "reason": "duplicate name (another input has the same relative path)"})
            continue
        seen.add(name)
        items.append((name, p))
    return items, skipped


def _read(path: Path) -> np.ndarray | ImageReadError:
    try:
        return read_image(path)
    except ImageReadError as exc:
        return exc


class _Reader:
    """Decodes batches of images in a small thread pool, one batch ahead (bounded memory)."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def submit(self, paths: Sequence[Path]) -> list[Future]:
        return [self.pool.submit(_read, p) for p in paths]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_existing(out: Path, model: CorrespondenceModel) -> None:
    if not out.exists():
        return
    with StoreReader(out) as r:
        sha = r.attrs.get("checkpoint_sha256")
        if r.source != "model" or sha != model.checkpoint_sha256:
            raise UserError(f"{out}: exists and was written by another model (checkpoint sha256 {str(sha)[:12]}…, "
                            f"this one {model.checkpoint_sha256[:12]}…); choose another --out or delete it")


def invert_to_store(
    model: CorrespondenceModel,
    paths: Sequence[Path],
    root: Optional[Path],
    out: Path,
    *,
    size: tuple[int, int],
    full: bool = False,
    batch_size: int = 16,
    shard: Optional[tuple[int, int]] = None,
    preview: Optional[Path] = None,
    strict: bool = False,
    dtype: str = "float16",
    workers: int = 2,
    progress: Optional[Callable[[int, int], None]] = None,
    on_total: Optional[Callable[[int], None]] = None,
    on_skip: Optional[Callable[[dict], None]] = None,
) -> InvertSummary:
    """Write the maps of ``paths`` to the store ``out`` (created or resumed). See the module doc.

    ``on_total(n)`` gets the number of inputs (after sharding); ``progress(advance, written_so_far)``
    is called after each batch; ``on_skip(entry)`` for each unreadable input. Returns an :class:`InvertSummary`.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if full and model.encoder is None:
        model._need_encoder()
    start = time.perf_counter()
    items, skipped = name_inputs(paths, root)
    if shard is not None:
        i, n = shard
        items = items[i::n]
    summary = InvertSummary(out=str(out), inputs=len(items), size=size, full=full,
                            shard=f"{shard[0]}/{shard[1]}" if shard else None)
    if on_total:
        on_total(len(items))
    _check_existing(out, model)
    writer = StoreWriter(
        out, size=size, source="model", dtype=dtype,  # type: ignore[arg-type]
        config_json=model.recipe.to_json(), checkpoint_sha256=model.checkpoint_sha256,
        structure_dim=model.latent_dim if full else None,
        texture_shape=(model.n_latent, model.latent_dim) if full else None,
    )
    recon_dir = reconstruction_dir(out) if full else None
    reader = _Reader(workers)
    try:
        done = set(writer.names)
        batches = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
        todo = [b for b in batches if any(name not in done for name, _ in b)]
        summary.already_done = sum(1 for name, _ in items if name in done)
        if progress and summary.already_done:
            progress(summary.already_done, 0)
        pending = reader.submit([p for _, p in todo[0]]) if todo else []
        for k, batch in enumerate(todo):
            futures = pending
            pending = reader.submit([p for _, p in todo[k + 1]]) if k + 1 < len(todo) else []
            fresh = sum(1 for name, _ in batch if name not in done)  # inputs this batch settles
            images, kept = [], []
            for (name, path), fut in zip(batch, futures):
                result = fut.result()
                if isinstance(result, ImageReadError):
                    reason = result.message.removeprefix(f"{path}: ")
                    entry = {"name": name, "path": str(path), "reason": reason}
                    if strict:
                        raise UserError(f"{result.message} (--strict stops at the first unreadable image)")
                    skipped.append(entry)
                    if on_skip:
                        on_skip(entry)
                    continue
                images.append(result)
                kept.append(name)
            if images:
                rows = _run_batch(model, images, size, full)
                for j, name in enumerate(kept):
                    if name in done:
                        continue
                    corr, w_s, w_t, recon = rows[j]
                    if recon_dir is not None:
                        write_image(recon_dir / picture_name(name), recon)
                    if preview is not None:
                        write_preview(preview / picture_name(name), images[j], corr)
                    writer.append(name, corr, structure=w_s, texture=w_t)
                    done.add(name)
                    summary.written += 1
            if progress:
                progress(fresh, summary.written)
        summary.rows = writer.complete
    finally:
        reader.close()
        writer.close()
    summary.skipped = skipped
    side = sidecar_path(out)
    if skipped:
        atomic_write_json(side, {"store": out.name, "skipped": skipped})
    elif side.exists():
        side.unlink()  # stale from an earlier run whose bad files have been fixed
    summary.seconds = time.perf_counter() - start
    return summary


@torch.inference_mode()
def _run_batch(model: CorrespondenceModel, images: list[np.ndarray], size: tuple[int, int], full: bool):
    """→ per image (map (2, H, W) float32, structure (D,) | None, texture (L, D) | None, recon | None)."""
    if not full:
        codes = model.structure_codes(images)
        maps = model.maps_from_codes(codes, [size] * len(images))
        return [(m, None, None, None) for m in maps]
    w_s, w_t = model.encode_tensor(images)
    maps = model.maps_from_codes(w_s, [size] * len(images))
    recon = tensor_to_images(model.synthesize(w_s, w_t))
    s, t = w_s.float().cpu().numpy(), w_t.float().cpu().numpy()
    return [(maps[j], s[j], t[j], recon[j]) for j in range(len(images))]


def preview_picture(image: np.ndarray, correspondence_map: np.ndarray) -> np.ndarray:
    """Thumbnail (resized to the map's H×W) beside the colour-coded map: uint8 (H, 2W + gap, 3)."""
    from PIL import Image

    h, w = correspondence_map.shape[-2:]
    thumb = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    gap = np.full((h, max(2, w // 32), 3), 255, np.uint8)
    return np.concatenate([thumb, gap, colourise_correspondence(correspondence_map)], axis=1)


def write_preview(path: Path, image: np.ndarray, correspondence_map: np.ndarray) -> None:
    write_image(path, preview_picture(image, correspondence_map))


def merge_stores(sources: Sequence[Path], out: Path) -> int:
    """Join shard stores into ``out`` (written atomically), rows sorted by name; returns the row count.

    Every source must come from the same model (checkpoint sha256) with the same layout; a name
    in two shards is an error. ``<shard>.skipped.json`` sidecars are joined into ``out``'s.
    """
    if not sources:
        raise UserError("--merge needs at least one store")
    out = Path(out)
    for s in sources:
        if Path(s).resolve() == out.resolve():
            raise UserError(f"--out {out} is also one of the stores to merge; choose another output")
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(StoreReader(s)) for s in sources]
        first = readers[0]
        layout = _layout(first)
        for r in readers[1:]:
            if _layout(r) != layout:
                raise UserError(f"{r.path}: layout (size/source/dtype/datasets/checkpoint) differs from {first.path}; "
                                "only shards of the same invert job can be merged")
        owner: dict[str, tuple[int, int]] = {}
        for ri, r in enumerate(readers):
            for i, name in enumerate(r.names):
                if name in owner:
                    raise UserError(f"{r.path}: name {name!r} is also in {readers[owner[name][0]].path}")
                owner[name] = (ri, i)
        attrs = first.attrs
        dtype, optional = layout[2], dict(layout[3])
        with atomic_path(out) as tmp:
            with StoreWriter(
                tmp, size=first.size, source=first.source, dtype=dtype,  # type: ignore[arg-type]
                with_valid="valid" in optional, config_json=attrs.get("config"),
                checkpoint_sha256=attrs.get("checkpoint_sha256"),
                structure_dim=optional["structure"][0] if "structure" in optional else None,
                texture_shape=optional.get("texture"), overwrite=True,
            ) as writer:
                for name in sorted(owner):
                    ri, i = owner[name]
                    r = readers[ri]
                    writer.append(
                        name, r.read("correspondence", i),
                        valid=r.read("valid", i) if "valid" in optional else None,
                        structure=r.read("structure", i) if "structure" in optional else None,
                        texture=r.read("texture", i) if "texture" in optional else None,
                    )
                rows = writer.complete
    skipped: list[dict] = []
    for s in sources:
        side = sidecar_path(Path(s))
        if side.is_file():
            skipped += json.loads(side.read_text(encoding="utf-8")).get("skipped", [])
    if skipped:
        atomic_write_json(sidecar_path(out), {"store": out.name, "skipped": skipped})
    return rows


def _layout(r: StoreReader) -> tuple:
    f = r._file  # read-only peek at dataset shapes/dtypes (StoreReader exposes no layout summary)
    optional = tuple(sorted((k, tuple(f[k].shape[1:])) for k in ("valid", "structure", "texture") if k in f))
    return (r.size, r.source, str(f["correspondence"].dtype), optional, r.attrs.get("checkpoint_sha256"))
