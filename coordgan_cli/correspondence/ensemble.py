"""Fusing the coordinate vote with the feature correlation (``propagate --matcher ensemble``).

Both matchers give, at every query pixel, a distribution over classes: the coordinate vote's
τ-weighted class shares (``vote.vote(..., return_probabilities=True)``) and the correlation's
warped one-hot reference labels (``correlation.correlation_probabilities``). The ensemble is their
plain average; its label is the argmax and its confidence the winning class's fused share. The
correlation runs at the matcher's working size and its probabilities are carried back to the
query's own size (``correlation.carry_back``) before they are averaged with the vote's, which is
computed on the query's own grid.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from coordgan_cli.correspondence.vote import PreparedReference, map_to_points, vote

# Without a tolerance the coordinate vote's class shares are estimates inside proven bounds (its
# labels are exact); measured on smooth synthetic warps they differ from the refined shares by up
# to 0.08, enough to flip a near-tied ensemble. Refining to 0.01 costs 2× the labels-only vote at
# 64² and 4.7× at 128² (0.35 s on this 2-core CPU), small beside the correlation itself (≈10 s at
# 128² with the default matcher here).
ENSEMBLE_TOL = 0.01


def coordinate_probabilities(query_map: np.ndarray, references: Sequence[PreparedReference], num_classes: int, *,
                             query_valid: np.ndarray | None = None, tau: float = 0.01,
                             mode: Literal["soft", "hard"] = "soft",
                             tol: float | None = ENSEMBLE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shares of the coordinate vote on one query map.

    query_map: (2, H, W) canonical coordinates; references: prepared references
    (``vote.prepare_references``); query_valid: (H, W) bool — pixels outside it are background
    with probability 1, as in ``vote.propagate_map``. Returns (probabilities (C, H, W) float32,
    each pixel summing to 1; distance (H, W) float32 to the nearest reference coordinate).
    """
    _, h, w = query_map.shape
    points = map_to_points(query_map)
    probabilities = np.zeros((h * w, num_classes), dtype=np.float32)
    probabilities[:, 0] = 1.0
    distance = np.zeros(h * w, dtype=np.float32)
    sel = np.ones(h * w, dtype=bool) if query_valid is None else query_valid.reshape(-1).astype(bool)
    if sel.any():
        res = vote(points[sel], list(references), num_classes, tau=tau, mode=mode, tol=tol,
                   return_probabilities=True)
        probabilities[sel] = res.probabilities
        distance[sel] = res.distance
    return np.ascontiguousarray(probabilities.T.reshape(num_classes, h, w)), distance.reshape(h, w)


def fuse_probabilities(*probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average class distributions of several matchers.

    probabilities: arrays (C, H, W) of the same shape (each pixel summing to 1). Returns (labels
    uint8 (H, W) = argmax of the mean, confidence float32 (H, W) = the winning class's mean share,
    mean (C, H, W) float32).
    """
    if not probabilities:
        raise ValueError("fuse_probabilities needs at least one probability map")
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1 or len(probabilities[0].shape) != 3:
        raise ValueError(f"probability maps must all be (C, H, W) of one shape, got {sorted(shapes)}")
    mean = np.mean([np.asarray(p, dtype=np.float32) for p in probabilities], axis=0).astype(np.float32)
    labels = mean.argmax(axis=0)
    confidence = np.take_along_axis(mean, labels[None], axis=0)[0]
    return labels.astype(np.uint8), np.clip(confidence, 0.0, 1.0).astype(np.float32), mean
