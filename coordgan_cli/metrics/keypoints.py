"""Correspondence accuracy against known truth: keypoint transfer + PCK, and end-point error.

Conventions: a correspondence map is (2, H, W) float, channel 0 = canonical x (across
columns), channel 1 = canonical y (down rows), in [-1, 1]. Keypoints are (K, 2) pixel (x, y)
with pixel centres at integer positions.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree


def sample_map(correspondence_map: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinearly sample a (2, H, W) map at (K, 2) pixel (x, y) points → (K, 2) canonical coords.

    Points outside the image are clamped to its border.
    """
    cmap = np.asarray(correspondence_map, dtype=np.float64)
    _, h, w = cmap.shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x = np.clip(pts[:, 0], 0, w - 1)
    y = np.clip(pts[:, 1], 0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[None]
    fy = (y - y0)[None]
    top = cmap[:, y0, x0] * (1 - fx) + cmap[:, y0, x1] * fx
    bottom = cmap[:, y1, x0] * (1 - fx) + cmap[:, y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).T


def transfer_keypoints(reference_map: np.ndarray, query_map: np.ndarray, reference_points: np.ndarray,
                       *, query_valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Move keypoints from a reference image to a query by nearest canonical coordinate.

    Each reference keypoint's canonical coordinate is read from the reference map (bilinear);
    its prediction in the query is the pixel whose query-map coordinate is nearest to it.

    Args:
        reference_map: (2, Hr, Wr) reference correspondence map.
        query_map: (2, Hq, Wq) query correspondence map.
        reference_points: (K, 2) pixel (x, y) in the reference.
        query_valid: optional (Hq, Wq) bool; only these query pixels can be matched.

    Returns:
        (points, distance): (K, 2) float pixel (x, y) in the query, and (K,) the canonical
        distance to the matched coordinate (a confidence: large = no good match).
    """
    coords = sample_map(reference_map, reference_points)
    _, h, w = query_map.shape
    flat = np.asarray(query_map, dtype=np.float64).reshape(2, -1).T
    index = np.arange(h * w)
    if query_valid is not None and query_valid.any():
        keep = np.asarray(query_valid, dtype=bool).reshape(-1)
        flat, index = flat[keep], index[keep]
    tree = cKDTree(flat)
    distance, nearest = tree.query(coords, k=1)
    pixel = index[nearest]
    points = np.stack([pixel % w, pixel // w], axis=1).astype(np.float64)
    return points, np.asarray(distance, dtype=np.float64)


def pck(predicted: np.ndarray, truth: np.ndarray, image_size: tuple[int, int],
        alphas: Sequence[float] = (0.05, 0.1), mask: Optional[np.ndarray] = None) -> dict[float, tuple[int, int]]:
    """Correct-keypoint counts: a prediction is correct within α × max(H, W) pixels of the truth.

    Args:
        predicted, truth: (K, 2) pixel (x, y).
        image_size: (H, W) of the query.
        alphas: thresholds as fractions of the larger image side.
        mask: (K,) bool, which keypoints count (e.g. visible in both images).

    Returns:
        α → (correct, counted), so counts can be summed over pairs before dividing.
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(truth), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    err = np.linalg.norm(predicted[keep] - truth[keep], axis=1)
    side = float(max(image_size))
    return {float(a): (int((err <= a * side).sum()), int(keep.sum())) for a in alphas}


def end_point_error(predicted_map: np.ndarray, true_map: np.ndarray,
                    valid: Optional[np.ndarray] = None) -> tuple[float, float, int]:
    """End-point error of a correspondence map against the ground truth.

    The error of a pixel is ‖c_pred − c_true‖, the distance between its predicted and true
    canonical coordinates. In pixels, each axis is scaled by (size − 1)/2 (x by (W − 1)/2,
    y by (H − 1)/2): the distance on the canonical frame drawn at the image's size. It is only
    meaningful when the method's canonical frame is the ground truth's (e.g. maps from another
    store of the same data); a learned model's frame is its own.

    Args:
        predicted_map, true_map: (2, H, W) maps at the same size.
        valid: (H, W) bool pixels to average over (default: all).

    Returns:
        (sum of canonical errors, sum of pixel errors, number of pixels) — sums, so several
        images can be pooled before dividing.
    """
    if predicted_map.shape != true_map.shape:
        raise ValueError(f"map shapes differ: {predicted_map.shape} vs {true_map.shape}")
    _, h, w = true_map.shape
    diff = np.asarray(predicted_map, dtype=np.float64) - np.asarray(true_map, dtype=np.float64)
    keep = np.ones((h, w), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    dx, dy = diff[0][keep], diff[1][keep]
    canonical = np.sqrt(dx ** 2 + dy ** 2)
    pixels = np.sqrt((dx * (w - 1) / 2.0) ** 2 + (dy * (h - 1) / 2.0) ** 2)
    return float(canonical.sum()), float(pixels.sum()), int(keep.sum())


def pooled_pck(counts: Iterable[dict[float, tuple[int, int]]]) -> dict[str, Optional[float]]:
    """Sum per-pair PCK counts → {"0.05": fraction, …} (None where nothing was counted)."""
    total: dict[float, list[int]] = {}
    for c in counts:
        for a, (ok, n) in c.items():
            t = total.setdefault(a, [0, 0])
            t[0] += ok
            t[1] += n
    return {f"{a:g}": (ok / n if n else None) for a, (ok, n) in sorted(total.items())}
