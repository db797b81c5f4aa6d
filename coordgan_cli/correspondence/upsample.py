"""Carrying class probabilities from a matcher's working resolution back to an image's own size.

Matching runs at the size the matcher was trained at (64 px for the shipped one); the labels are
wanted at the query photo's own size. Upsampling the argmax would give blocky, misplaced
boundaries, so the class *probabilities* are upsampled bilinearly and then refined by the
full-resolution image with a guided filter (He, Sun & Tang, "Guided Image Filtering", ECCV 2010 /
TPAMI 2013): in every window the output is a linear function of the guide image fitted to the
probabilities, so a soft, blurred probability ramp snaps onto the nearby image edge while flat
regions stay as they were. Everything here is NumPy + OpenCV box filters, O(HW) per class
whatever the radius.
"""

from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np


def _box_mean(x: np.ndarray, radius: int, counts: np.ndarray) -> np.ndarray:
    """Mean of ``x`` (H, W) over the (2r+1)² window of each pixel, counting only pixels inside
    the image (the window is clipped at the border, as in He et al.'s reference code)."""
    sums = cv2.boxFilter(x, cv2.CV_32F, (2 * radius + 1, 2 * radius + 1), normalize=False,
                         borderType=cv2.BORDER_CONSTANT)
    return sums / counts


def _window_counts(h: int, w: int, radius: int) -> np.ndarray:
    ones = np.ones((h, w), np.float32)
    return cv2.boxFilter(ones, cv2.CV_32F, (2 * radius + 1, 2 * radius + 1), normalize=False,
                         borderType=cv2.BORDER_CONSTANT)


def _guide_float(guide: np.ndarray) -> np.ndarray:
    """uint8 guides are scaled to [0, 1] (so ``eps`` means the same for both dtypes)."""
    if guide.dtype == np.uint8:
        return guide.astype(np.float32) / 255.0
    return guide.astype(np.float32)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``src`` by ``guide``, with box filters.

    guide: (H, W) grey or (H, W, 3) colour, float32 or uint8 (uint8 is scaled to [0, 1]).
    src:   (H, W) or (K, H, W) float32 — each of the K planes is filtered independently.
    radius: window half-size r (windows are (2r+1)², clipped at the image border).
    eps:   regularisation; edges whose variance in the guide is well above ``eps`` are kept.
    Returns float32 with the shape of ``src``. A colour guide uses the full 3×3 covariance per
    window (the paper's colour form), which separates regions of equal brightness and different
    colour.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    single = src.ndim == 2
    planes = src[None] if single else src
    if planes.ndim != 3:
        raise ValueError(f"src must be (H,W) or (K,H,W), got shape {src.shape}")
    h, w = planes.shape[1:]
    if guide.shape[:2] != (h, w) or guide.ndim not in (2, 3) or (guide.ndim == 3 and guide.shape[2] != 3):
        raise ValueError(f"guide must be ({h},{w}) or ({h},{w},3), got shape {guide.shape}")
    guide = _guide_float(guide)
    planes = planes.astype(np.float32, copy=False)
    counts = _window_counts(h, w, radius)

    def mean(x: np.ndarray) -> np.ndarray:
        return _box_mean(np.ascontiguousarray(x), radius, counts)

    out = np.empty_like(planes)
    if guide.ndim == 2:
        mean_i = mean(guide)
        var_i = mean(guide * guide) - mean_i * mean_i
        for k, p in enumerate(planes):
            mean_p = mean(p)
            a = (mean(guide * p) - mean_i * mean_p) / (var_i + eps)
            b = mean_p - a * mean_i
            out[k] = mean(a) * guide + mean(b)
    else:
        channels = [np.ascontiguousarray(guide[..., c]) for c in range(3)]
        means = [mean(c) for c in channels]
        inverse = _inverse_covariance(channels, means, mean, eps)  # {(i, j): (H, W)}, symmetric
        for k, p in enumerate(planes):
            mean_p = mean(p)
            cov = [mean(c * p) - m * mean_p for c, m in zip(channels, means)]
            a = [inverse[i, 0] * cov[0] + inverse[i, 1] * cov[1] + inverse[i, 2] * cov[2] for i in range(3)]
            b = mean_p - a[0] * means[0] - a[1] * means[1] - a[2] * means[2]
            out[k] = mean(a[0]) * channels[0] + mean(a[1]) * channels[1] + mean(a[2]) * channels[2] + mean(b)
    return out[0] if single else out


def _inverse_covariance(channels: list[np.ndarray], means: list[np.ndarray], mean, eps: float
                        ) -> dict[tuple[int, int], np.ndarray]:
    """Per-pixel inverse of the windowed 3×3 colour covariance + eps·I, by cofactors (float64
    arithmetic, float32 result): entries (i, j) → (H, W)."""
    s = {}
    for i in range(3):
        for j in range(i, 3):
            s[i, j] = (mean(channels[i] * channels[j]) - means[i] * means[j]).astype(np.float64)
            s[j, i] = s[i, j]
    for i in range(3):
        s[i, i] = s[i, i] + eps
    c00 = s[1, 1] * s[2, 2] - s[1, 2] * s[1, 2]
    c01 = s[0, 2] * s[1, 2] - s[0, 1] * s[2, 2]
    c02 = s[0, 1] * s[1, 2] - s[0, 2] * s[1, 1]
    c11 = s[0, 0] * s[2, 2] - s[0, 2] * s[0, 2]
    c12 = s[0, 1] * s[0, 2] - s[0, 0] * s[1, 2]
    c22 = s[0, 0] * s[1, 1] - s[0, 1] * s[0, 1]
    det = s[0, 0] * c00 + s[0, 1] * c01 + s[0, 2] * c02
    cof = {(0, 0): c00, (0, 1): c01, (0, 2): c02, (1, 1): c11, (1, 2): c12, (2, 2): c22}
    inverse = {}
    for (i, j), c in cof.items():
        inverse[i, j] = inverse[j, i] = (c / det).astype(np.float32)
    return inverse


def default_radius(low: tuple[int, int], high: tuple[int, int]) -> int:
    """Guided-filter radius for an upsampling from ``low`` (h, w) to ``high`` (H, W): one low-res
    pixel's footprint, i.e. the width of the blur bilinear upsampling leaves at a boundary."""
    scale = max(high[0] / low[0], high[1] / low[1])
    return max(1, math.ceil(scale))


def upsample_probabilities(probs: np.ndarray, size: tuple[int, int], guide: Optional[np.ndarray] = None, *,
                           radius: Optional[int] = None, eps: float = 1e-4) -> np.ndarray:
    """Class probabilities (K, h, w) → (K, H, W) at ``size`` = (H, W), float32.

    Bilinear upsampling (pixel-centre aligned, like ``cv2.resize``/``align_corners=False``; area
    averaging when ``size`` is smaller than the input); with a
    ``guide`` image (H, W, 3) uint8 (or (H, W)), each class plane is then refined by
    :func:`guided_filter` so that boundaries follow the image's edges, clipped at 0 and
    renormalised so every pixel sums to 1 (pixels where every class was clipped keep the bilinear
    values). ``radius`` defaults to :func:`default_radius` for this scale factor.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (K,h,w), got shape {probs.shape}")
    height, width = int(size[0]), int(size[1])
    k, h, w = probs.shape
    probs = probs.astype(np.float32, copy=False)
    if (h, w) == (height, width):
        up = probs.copy()
    else:
        # Area averaging where the output is smaller (a query enlarged to the working size).
        interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
        up = np.stack([cv2.resize(np.ascontiguousarray(p), (width, height), interpolation=interp) for p in probs])
    if guide is None:
        return up
    if guide.shape[:2] != (height, width):
        raise ValueError(f"guide must be {height}×{width} like the output, got shape {guide.shape}")
    r = default_radius((h, w), (height, width)) if radius is None else radius
    refined = np.clip(guided_filter(guide, up, r, eps), 0.0, None)
    total = refined.sum(axis=0)
    dead = total < 1e-6
    refined /= np.where(dead, 1.0, total)[None]
    if dead.any():
        refined[:, dead] = up[:, dead] / np.maximum(up[:, dead].sum(axis=0), 1e-12)
    return refined.astype(np.float32, copy=False)
