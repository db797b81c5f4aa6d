"""Global image descriptors for choosing which images to annotate.

One function per source, all with the same shape of result: (N, D) float32 rows for the images
that could be read, plus the indices of those images (an unreadable file is reported and left
out, not fatal, so one corrupt photo does not stop a run over a large folder). Images are read
and described in batches, so memory is O(batch) for pixels and O(N·D) for the result.

``backbone``: the global descriptor of a pretrained backbone from the registry
(``coordgan_cli.backbones``, the same names and weights files as the real-photo matchers; its
deepest layer average-pooled, or a DINOv2 ViT's class token; L2-normalised), each image resized
to a square input first — 299² for the default ``inception`` (the Inception-v3 that FID uses, so
its 2048-d pool features), 224² for the others. ``structure``: the CoordGAN encoder's structure code w
(``inference.CorrespondenceModel.structure_codes``), which ignores texture by construction and
so groups images by pose/shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from coordgan_cli.io.images import ImageReadError, read_image

BATCH = 16
DEFAULT_BACKBONE = "inception"
INPUT_SIZES = {"inception": 299}  # square side each image is resized to; others: DEFAULT_INPUT_SIZE
DEFAULT_INPUT_SIZE = 224


def _batches(paths: Sequence[Path], batch_size: int, size: Optional[int],
             on_skip: Callable[[Path, str], None]) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(indices, uint8 images) per batch; images resized to size² when ``size`` is given."""
    from PIL import Image

    indices: list[int] = []
    images: list[np.ndarray] = []
    for i, path in enumerate(paths):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            on_skip(Path(path), exc.message)
            continue
        if size is not None and image.shape[:2] != (size, size):
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        indices.append(i)
        images.append(image)
        if len(images) == batch_size:
            yield indices, images
            indices, images = [], []
    if images:
        yield indices, images


def _ignore(path: Path, reason: str) -> None:
    pass


def backbone_descriptors(paths: Sequence[Path], backbone: str = DEFAULT_BACKBONE, weights: Optional[Path] = None, *,
                         device: torch.device, batch_size: int = BATCH,
                         on_batch: Optional[Callable[[int], None]] = None,
                         on_skip: Callable[[Path, str], None] = _ignore) -> tuple[np.ndarray, list[int]]:
    """A registry backbone's global descriptors: ((M, D) float32, indices into ``paths`` of the M images read).

    ``backbone`` / ``weights``: as ``load_backbone`` (a missing or wrong weights file is a
    UserError before any image is read). ``on_batch(n)`` is called after each batch with the
    number of paths gone through so far; ``on_skip(path, reason)`` for each unreadable image.
    """
    from coordgan_cli.backbones import load_backbone

    model = load_backbone(backbone, weights, device)
    size = INPUT_SIZES.get(backbone, DEFAULT_INPUT_SIZE)
    rows: list[np.ndarray] = []
    kept: list[int] = []
    for indices, images in _batches(paths, batch_size, size, on_skip):
        x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
        rows.append(model.descriptor(x).float().cpu().numpy())
        kept.extend(indices)
        if on_batch is not None:
            on_batch(indices[-1] + 1)
    if rows:
        return np.concatenate(rows), kept
    return np.zeros((0, 0), np.float32), kept


def inception_descriptors(paths: Sequence[Path], *, device: torch.device, batch_size: int = BATCH,
                          on_batch: Optional[Callable[[int], None]] = None,
                          on_skip: Callable[[Path, str], None] = _ignore) -> tuple[np.ndarray, list[int]]:
    """``backbone_descriptors`` with the shipped Inception-v3: ((M, 2048) float32, indices read)."""
    return backbone_descriptors(paths, "inception", device=device, batch_size=batch_size, on_batch=on_batch,
                                on_skip=on_skip)


def structure_descriptors(paths: Sequence[Path], ckpt: Path, *, device: torch.device, batch_size: int = BATCH,
                          on_batch: Optional[Callable[[int], None]] = None,
                          on_skip: Callable[[Path, str], None] = _ignore) -> tuple[np.ndarray, list[int]]:
    """CoordGAN structure codes w from an encoder checkpoint: ((M, D) float32, indices of the M images read)."""
    from coordgan_cli.inference import load_correspondence_model

    model = load_correspondence_model(ckpt, device)
    rows: list[np.ndarray] = []
    kept: list[int] = []
    with torch.inference_mode():
        for indices, images in _batches(paths, batch_size, None, on_skip):
            rows.append(model.structure_codes(images).float().cpu().numpy())
            kept.extend(indices)
            if on_batch is not None:
                on_batch(indices[-1] + 1)
    return (np.concatenate(rows) if rows else np.zeros((0, model.latent_dim), np.float32)), kept
