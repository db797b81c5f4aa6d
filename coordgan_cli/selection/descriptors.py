"""Global image descriptors for choosing which images to annotate.

One function per source, all with the same shape of result: (N, D) float32 rows for the images
that could be read, plus the indices of those images (an unreadable file is reported and left
out, not fatal, so one corrupt photo does not stop a run over a large folder). Images are read
and described in batches, so memory is O(batch) for pixels and O(N·D) for the result.

``inception``: the 2048-d pool features of the offline Inception-v3 that FID uses
(``metrics.fid``), each image resized to the network's 299² input. ``structure``: the CoordGAN
encoder's structure code w (``inference.CorrespondenceModel.structure_codes``), which ignores
texture by construction and so groups images by pose/shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from coordgan_cli.io.images import ImageReadError, read_image

DESCRIPTORS = ("inception", "structure")
BATCH = 16


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


def inception_descriptors(paths: Sequence[Path], *, device: torch.device, batch_size: int = BATCH,
                          on_batch: Optional[Callable[[int], None]] = None,
                          on_skip: Callable[[Path, str], None] = _ignore) -> tuple[np.ndarray, list[int]]:
    """Inception-v3 pool features: ((M, 2048) float32, indices into ``paths`` of the M images read).

    ``on_batch(n)`` is called after each batch with the number of paths gone through so far;
    ``on_skip(path, reason)`` for each unreadable image.
    """
    from coordgan_cli.metrics.fid import FEATURE_DIM, INPUT_SIZE, inception_features, load_extractor

    model = load_extractor(device)
    rows: list[np.ndarray] = []
    kept: list[int] = []
    for indices, images in _batches(paths, batch_size, INPUT_SIZE[0], on_skip):
        rows.append(inception_features([np.stack(images)], model, device).astype(np.float32))
        kept.extend(indices)
        if on_batch is not None:
            on_batch(indices[-1] + 1)
    return (np.concatenate(rows) if rows else np.zeros((0, FEATURE_DIM), np.float32)), kept


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
