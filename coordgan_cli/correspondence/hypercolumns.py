"""What the pretrained-feature matchers share: images → hypercolumns at a working resolution,
masks → soft labels on the same grid, left/right class mirroring, and upsampling back.

Pure NumPy at the edges (uint8 images and id masks in, float32 arrays out); torch inside.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from coordgan_cli.backbones.base import Backbone

IGNORE = 255


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where} must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8 (area when shrinking, bilinear when growing).

    The working frame is square for every image, whatever its aspect: references and queries
    are squeezed alike, and the probabilities are stretched back to each query's own shape.
    """
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


class HypercolumnEncoder:
    """A backbone at a fixed square working resolution: images → (C, h, w) float32 hypercolumns.

    Args:
        backbone: from ``coordgan_cli.backbones.load_backbone``.
        working_size: side of the square every image is resized to before the backbone.
    """

    def __init__(self, backbone: Backbone, working_size: int = 512) -> None:
        self.backbone = backbone
        self.working_size = int(working_size)
        self.grid = backbone.grid_size(self.working_size, self.working_size)

    @property
    def device(self) -> torch.device:
        return next((b.device for b in self.backbone.buffers()), None) or next(
            (p.device for p in self.backbone.parameters()), torch.device("cpu"))

    def encode(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, C, h, w) float32 hypercolumns of a list of (H, W, 3) uint8 images."""
        batch = np.stack([resize_image(check_image(im), self.working_size) for im in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return self.backbone.features(x).float()


def soft_labels(mask: np.ndarray, classes: Sequence[int], grid: tuple[int, int]) -> np.ndarray:
    """(H, W) id mask → (K, h, w) float32 class shares on the grid (area-averaged one-hot).

    Ignored pixels (255) and ids outside ``classes`` add to no class, so their cells sum below 1.
    """
    h, w = grid
    out = np.empty((len(classes), h, w), dtype=np.float32)
    for i, c in enumerate(classes):
        out[i] = cv2.resize((mask == c).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return out


def mirror_pairs(names: dict[int, str]) -> dict[int, int]:
    """Class id → its mirror id under a horizontal flip, from left/right names.

    Recognises ``left``/``right`` words (``front_left_door`` ↔ ``front_right_door``) and ``l_``/``r_``
    prefixes (``l_eye`` ↔ ``r_eye``); ids without a partner map to themselves.
    """
    by_name = {n.lower(): i for i, n in names.items()}
    swap: dict[int, int] = {}
    for i, n in names.items():
        n = n.lower()
        candidates = []
        if re.search(r"left|right", n):
            candidates.append(re.sub(r"left|right", lambda m: "right" if m.group(0) == "left" else "left", n))
        m = re.match(r"^([lr])([_\- ])(.*)$", n)
        if m:
            candidates.append(("r" if m.group(1) == "l" else "l") + m.group(2) + m.group(3))
        partner = next((by_name[c] for c in candidates if c in by_name and c != n), None)
        swap[i] = i if partner is None else partner
    return swap


def flip_mask(mask: np.ndarray, swap: Optional[dict[int, int]]) -> np.ndarray:
    """Mirror an id mask left↔right, renaming left/right classes through ``swap``."""
    flipped = np.ascontiguousarray(mask[:, ::-1])
    if swap:
        table = np.arange(256, dtype=np.uint8)
        for a, b in swap.items():
            table[a] = b
        flipped = table[flipped]
    return flipped


def position_channels(grid: tuple[int, int], frequencies: int = 0) -> np.ndarray:
    """(P, h, w) float32 normalised (x, y) in [-1, 1] at cell centres, plus sin/cos at
    ``frequencies`` octaves (P = 2 + 4·frequencies)."""
    h, w = grid
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    chans = [xx, yy]
    for f in range(frequencies):
        s = np.pi * 2 ** f
        chans += [np.sin(s * xx), np.cos(s * xx), np.sin(s * yy), np.cos(s * yy)]
    return np.stack(chans).astype(np.float32)


def pca_basis(samples: torch.Tensor, dims: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (C,), basis (C, dims)) of the top principal directions of (N, C) samples.

    Randomised (``torch.pca_lowrank``, seeded): seconds for 20 000 × 3 000, where a full SVD
    takes tens of seconds on a CPU. ``dims`` is capped at min(N, C).
    """
    dims = min(int(dims), samples.shape[0], samples.shape[1])
    mean = samples.mean(dim=0)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        _, _, v = torch.pca_lowrank(samples - mean, q=dims, center=False, niter=3)
    finally:
        torch.random.set_rng_state(state)
    return mean, v[:, :dims].contiguous()
