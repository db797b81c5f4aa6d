"""MCL-Net's marginal contrastive loss and the positive pairs it is trained on (DESIGN §6).

The supervision is free: two images whose pixels carry canonical coordinates (a ``synth``
ground-truth store, or two CoordGAN samples) — pixels with equal canonical coordinates are the
same semantic point, hence positives; the other sampled positions are negatives.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree


def marginal_contrastive_loss(feat_a: torch.Tensor, feat_b: torch.Tensor, *, margin: float = 0.25,
                              tau: float = 0.07, negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """InfoNCE with an additive angular margin on the positive (ArcFace-style), mean over rows.

    feat_a, feat_b: (N, D); row i of A and row i of B are a positive pair, every other row of B
    is a negative for row i of A. Both are L2-normalised; with s_ij = cos θ_ij the logits of row i
    are [s_i1, …, cos(θ_ii + m), …, s_iN] / tau and the loss is the cross-entropy of the diagonal.
    The margin makes the positive look less similar than it is, so training must separate it
    from the negatives by at least m in angle. cos(θ + m) decreases only while θ + m ≤ π; beyond
    that (a positive pointing almost opposite) the usual monotone extension
    cos θ − m·sin(π − m) is used so the loss still pushes the pair together.
    ``negatives``: optional (M, D) extra candidates for every row (e.g. background pixels of B,
    which have no positive of their own), appended as further columns.
    Returns a scalar tensor.
    """
    if feat_a.dim() != 2 or feat_a.shape != feat_b.shape:
        raise ValueError(f"feat_a and feat_b must both be (N,D); got {tuple(feat_a.shape)} and {tuple(feat_b.shape)}")
    a = F.normalize(feat_a, dim=1)
    b = F.normalize(feat_b, dim=1)
    cosine = a @ b.t()  # (N, N)
    positive = cosine.diagonal()
    # sin θ from cos θ; the clamp keeps the gradient finite when a pair is already identical.
    sine = torch.sqrt((1.0 - positive * positive).clamp_min(1e-6))
    shifted = positive * math.cos(margin) - sine * math.sin(margin)
    shifted = torch.where(positive > math.cos(math.pi - margin), shifted, positive - margin * math.sin(math.pi - margin))
    n = cosine.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=cosine.device)
    logits = torch.where(eye, torch.diag_embed(shifted), cosine) / tau
    if negatives is not None and negatives.shape[0] > 0:
        logits = torch.cat([logits, (a @ F.normalize(negatives, dim=1).t()) / tau], dim=1)
    return F.cross_entropy(logits, torch.arange(n, device=cosine.device))


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def sample_positive_pairs(coords_a, valid_a, coords_b, valid_b, n: int, generator: torch.Generator,
                          max_dist: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to ``n`` pixels of A and pair each with the pixel of B of nearest canonical coordinate.

    coords_a: (2, Ha, Wa) canonical (x, y) per pixel; valid_a: (Ha, Wa) bool or None (all valid);
    coords_b / valid_b the same for B (its size may differ). Sampling draws distinct valid pixels
    of A with ``generator`` (torch.Generator, CPU) — deterministic for a given generator state.
    The nearest valid pixel of B is found with a KD-tree over B's coordinates; pairs whose
    coordinate distance exceeds ``max_dist`` (canonical units; one pixel of a 128 grid is
    2/127) are dropped, as are repeated B pixels (so every negative really is another point).
    Returns (idx_a, idx_b): int64 (M,) flat indices into Ha·Wa and Hb·Wb, M ≤ n.
    """
    ca = _as_numpy(coords_a).astype(np.float64)
    cb = _as_numpy(coords_b).astype(np.float64)
    if ca.ndim != 3 or ca.shape[0] != 2 or cb.ndim != 3 or cb.shape[0] != 2:
        raise ValueError(f"coordinates must be (2,H,W); got {ca.shape} and {cb.shape}")
    va = np.ones(ca.shape[1:], bool) if valid_a is None else _as_numpy(valid_a).astype(bool)
    vb = np.ones(cb.shape[1:], bool) if valid_b is None else _as_numpy(valid_b).astype(bool)
    cand_a = np.flatnonzero(va.reshape(-1))
    cand_b = np.flatnonzero(vb.reshape(-1))
    empty = torch.zeros(0, dtype=torch.int64)
    if cand_a.size == 0 or cand_b.size == 0 or n < 1:
        return empty, empty
    order = torch.randperm(cand_a.size, generator=generator)[: min(n, cand_a.size)].numpy()
    idx_a = cand_a[order]
    points_b = cb.reshape(2, -1)[:, cand_b].T
    dist, nearest = cKDTree(points_b).query(ca.reshape(2, -1)[:, idx_a].T, k=1)
    idx_b = cand_b[nearest]
    keep = dist <= max_dist
    # Keep the first occurrence of each B pixel: a duplicate would make a positive also a negative.
    _, first = np.unique(np.where(keep, idx_b, -1 - np.arange(idx_b.size)), return_index=True)
    unique_mask = np.zeros(idx_b.size, bool)
    unique_mask[first] = True
    keep &= unique_mask
    return torch.from_numpy(idx_a[keep].astype(np.int64)), torch.from_numpy(idx_b[keep].astype(np.int64))
