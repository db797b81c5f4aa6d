"""Keypoint transfer through canonical coordinates.

A reference keypoint at pixel (x, y) has the canonical coordinate c = ref_map(x, y) (bilinear);
in a query it lands on the pixel whose coordinate is nearest to c (exact, KD-tree). Its
confidence is exp(−‖c_query − c‖ / τ): 1 when the query holds that very coordinate, falling by e
every τ. With several references, the match with the nearest coordinate wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KeypointTransfer:
    """xy (K, 2) float32 query pixel positions (x across, y down; NaN where no reference had the
    keypoint), confidence (K,) float32 in [0, 1], distance (K,) float32 coordinate distance."""

    xy: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray


def sample_map(correspondence: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear sample of a (2, H, W) map at pixel positions xy (K, 2) → (K, 2) coordinates."""
    _, h, w = correspondence.shape
    x = np.clip(xy[:, 0].astype(np.float64), 0, w - 1)
    y = np.clip(xy[:, 1].astype(np.float64), 0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    c = correspondence.astype(np.float64)
    out = (c[:, y0, x0] * (1 - fx) * (1 - fy) + c[:, y0, x1] * fx * (1 - fy)
           + c[:, y1, x0] * (1 - fx) * fy + c[:, y1, x1] * fx * fy)
    return out.T


def transfer_keypoints(query_map: np.ndarray, references: list[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                       tau: float = 0.01, query_valid: np.ndarray | None = None) -> KeypointTransfer:
    """Transfer K keypoints to one query.

    query_map: (2, H, W). references: [(ref_map (2, h, w), xy (K, 2) pixel positions, visible (K,)
    bool)] — every reference lists the same K keypoints. query_valid: (H, W) bool pixels allowed
    as matches. Returns a KeypointTransfer.
    """
    from scipy.spatial import cKDTree

    _, h, w = query_map.shape
    pts = query_map.reshape(2, -1).T.astype(np.float64)
    allowed = np.ones(h * w, bool) if query_valid is None else query_valid.reshape(-1).astype(bool)
    allowed &= np.isfinite(pts).all(axis=1)
    index = np.flatnonzero(allowed)
    k = references[0][1].shape[0]
    best_d = np.full(k, np.inf)
    best_xy = np.full((k, 2), np.nan)
    if index.size:
        tree = cKDTree(pts[index])
        for ref_map, xy, visible in references:
            if not np.any(visible):
                continue
            coords = sample_map(ref_map, xy)
            d, j = tree.query(coords, k=1)
            pix = index[j]
            better = visible.astype(bool) & (d < best_d)
            best_d[better] = d[better]
            best_xy[better, 0] = pix[better] % w
            best_xy[better, 1] = pix[better] // w
    conf = np.where(np.isfinite(best_d), np.exp(-np.where(np.isfinite(best_d), best_d, 0.0) / tau), 0.0)
    return KeypointTransfer(xy=best_xy.astype(np.float32), confidence=conf.astype(np.float32),
                            distance=best_d.astype(np.float32))
