"""Which images to annotate: selection over global image descriptors (pure: arrays in, indices out).

Every function takes an (N, D) float array of descriptors (one row per image) and returns
indices into it. Rows are centred on the set's mean, then L2-normalised, so distances are cosine
distances of what sets images apart: raw CNN pool features (all ≥ 0) share a large common
component that makes every pair look alike (on the car photos, centring raised the part classes
covered by 5 k-medoids picks from 15.9 to 17.2 of 18 on average over seeds). Nothing reads
files; the same inputs and seed give the same picks.

``representatives`` — k-medoids in the k-means sense: k-means++ seeding, a few Lloyd
  iterations (on a random sample of at most 20 000 images), then each cluster's member nearest
  its centroid is the pick (the medoid of the centroid), and the cluster's size is the share of
  the folder it stands for. Images already annotated (``fixed``) act as clusters whose centre
  never moves, so the picks cover what they do not. Cost: O(N·K·D) per pass with K = k + |fixed|,
  memory O(N·D + N·K) — no N×N matrix.
``farthest_first`` — greedy farthest-point (max-min) selection, O(N·K·D), for pure diversity.
``next_round`` — after a propagation: greedy max of uncertainty × distance to the nearest image
  already annotated or already picked, O(N·K·D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

_CHUNK = 8192  # rows per distance block: the N×K distance matrix is formed in slices


def normalise(descriptors: np.ndarray, centre: bool = True) -> np.ndarray:
    """(N, D) → float32 rows centred on their mean (unless ``centre`` is False: the raw cosine,
    kept for comparison), then of unit length (zero rows stay zero)."""
    x = np.array(descriptors, dtype=np.float32)  # the one O(N·D) copy; the rest is in place
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"descriptors must be (N, D) with N ≥ 1, got shape {x.shape}")
    if centre:
        x -= x.mean(axis=0, dtype=np.float64).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _sq_dist(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, D), (K, D) → (N, K) squared Euclidean distances ≥ 0, computed in row blocks."""
    out = np.empty((len(x), len(centres)), dtype=np.float32)
    c2 = (centres * centres).sum(axis=1)
    for s in range(0, len(x), _CHUNK):
        block = x[s:s + _CHUNK]
        d = (block * block).sum(axis=1)[:, None] + c2[None, :] - 2.0 * block @ centres.T
        out[s:s + _CHUNK] = np.maximum(d, 0.0)
    return out


def _cluster_sums(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign rows to their nearest centre; per centre, the (K, D) sum of its rows and (K,) count.

    Row blocks keep memory at O(block·K + K·D) (no copy of a cluster's rows)."""
    k = len(centres)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    for s in range(0, len(x), _CHUNK):
        block = x[s:s + _CHUNK]
        assign = _sq_dist(block, centres).argmin(axis=1)
        one_hot = np.zeros((len(block), k), dtype=np.float32)
        one_hot[np.arange(len(block)), assign] = 1.0
        sums += one_hot.T @ block
        counts += np.bincount(assign, minlength=k)
    return sums.astype(np.float32), counts


@dataclass
class Selection:
    """Picks (indices into the descriptors, best first) and, per pick, the number of images it stands for."""

    indices: list[int]
    cluster_sizes: list[int]
    assignment: Optional[np.ndarray] = None  # (N,) index into ``indices`` (or -1 - f for fixed image f)

    def shares(self, total: int) -> list[float]:
        return [s / total for s in self.cluster_sizes]


def _check(n: int, k: int, fixed: Sequence[int]) -> list[int]:
    fixed = sorted(set(int(f) for f in fixed))
    if any(f < 0 or f >= n for f in fixed):
        raise ValueError(f"fixed indices must be in [0, {n})")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n - len(fixed):
        raise ValueError(f"cannot pick {k} of {n - len(fixed)} selectable images")
    return fixed


def _kmeanspp(x: np.ndarray, k: int, fixed_centres: Optional[np.ndarray], selectable: np.ndarray,
              rng: np.random.Generator) -> list[int]:
    """k-means++ seeding (D² sampling) of k rows among ``selectable`` ones, continuing from the
    (F, D) ``fixed_centres`` (None or F = 0: none)."""
    chosen: list[int] = []
    if fixed_centres is not None and len(fixed_centres):
        nearest = _sq_dist(x, fixed_centres).min(axis=1)
    else:
        first = int(rng.choice(np.flatnonzero(selectable)))
        chosen.append(first)
        nearest = _sq_dist(x, x[[first]])[:, 0]
    while len(chosen) < k:
        weights = np.where(selectable, nearest, 0.0).astype(np.float64)
        weights[chosen] = 0.0
        total = weights.sum()
        if total <= 0:  # every selectable image duplicates a centre: take the first free ones
            pick = int(np.flatnonzero(selectable & ~np.isin(np.arange(len(x)), chosen))[0])
        else:
            pick = int(rng.choice(len(x), p=weights / total))
        chosen.append(pick)
        nearest = np.minimum(nearest, _sq_dist(x, x[[pick]])[:, 0])
    return chosen


def representatives(descriptors: np.ndarray, k: int, *, fixed: Sequence[int] = (), seed: int = 0,
                    iterations: int = 20, restarts: int = 8, sample: int = 20_000, centre: bool = True
                    ) -> Selection:
    """The k images that best stand for the set (k-medoids via k-means++ + Lloyd + nearest member).

    Args:
        descriptors: (N, D) global descriptors.
        k: number of images to pick.
        fixed: indices already annotated; they are never picked and their clusters keep them as centre.
        seed: the k-means++ seeding (and the sample) draw from ``np.random.default_rng(seed)``.
        iterations: Lloyd iterations per restart.
        restarts: seedings tried; the one whose picks have the lowest medoid cost over all N wins.
        sample: above this many images, seeding and Lloyd run on a random sample of this size
            (centroids of 20 000 images are as good as of 100 000 for a few clusters); the picks
            (nearest member of each centroid) and the costs are always computed over all N.

    Cost: O(restarts · (iterations · min(N, sample) + N) · K · D) time, O(N·D + N·K) memory.

    Returns:
        ``Selection``: picks ordered by cluster size (largest first), their cluster sizes
        (the fixed images' clusters are not counted in them).
    """
    x = normalise(descriptors, centre)
    n = len(x)
    fixed = _check(n, k, fixed)
    selectable = np.ones(n, dtype=bool)
    selectable[fixed] = False
    rng = np.random.default_rng(seed)
    if n > sample:
        rows = np.sort(rng.choice(np.flatnonzero(selectable), size=max(sample, k), replace=False))
        xs, selectable_s = x[rows], np.ones(len(rows), dtype=bool)
    else:
        xs, selectable_s = x, selectable
    fixed_centres = x[fixed]
    best = None
    for _ in range(max(1, restarts)):
        free = _kmeanspp(xs, k, fixed_centres, selectable_s, rng)
        centres = np.concatenate([fixed_centres, xs[free]])
        for _ in range(iterations):
            sums, counts = _cluster_sums(xs, centres)
            free_rows = np.arange(len(fixed), len(centres))
            filled = free_rows[counts[free_rows] > 0]
            new = sums[filled] / counts[filled, None]
            if np.allclose(new, centres[filled]):
                break
            centres[filled] = new
        # Each free cluster's pick: its selectable member nearest the centroid (a real image), over all N.
        dist = _sq_dist(x, centres)
        assign = dist.argmin(axis=1)
        picks = []
        taken = np.zeros(n, dtype=bool)
        for j in range(len(fixed), len(centres)):
            d = np.where(selectable & ~taken & (assign == j), dist[:, j], np.inf)
            if not np.isfinite(d).any():  # an emptied cluster: the nearest free image overall
                d = np.where(selectable & ~taken, dist[:, j], np.inf)
            p = int(np.argmin(d))
            picks.append(p)
            taken[p] = True
        # Cost with the picks (and fixed images) as the medoids: what the user will really annotate.
        medoid_dist = _sq_dist(x, x[fixed + picks])
        cost = float(medoid_dist.min(axis=1).sum())
        if best is None or cost < best[0] - 1e-9:
            best = (cost, picks, medoid_dist.argmin(axis=1))
    _, picks, assign = best
    sizes = [int((assign == len(fixed) + j).sum()) for j in range(k)]
    order = sorted(range(k), key=lambda j: (-sizes[j], picks[j]))
    remap = {len(fixed) + j: r for r, j in enumerate(order)}
    assignment = np.array([remap.get(a, -1 - a) for a in assign], dtype=np.int64)
    return Selection([picks[j] for j in order], [sizes[j] for j in order], assignment)


def farthest_first(descriptors: np.ndarray, k: int, *, fixed: Sequence[int] = (), seed: int = 0,
                   centre: bool = True) -> Selection:
    """Greedy max-min picks: each is the image farthest from every fixed or earlier pick.

    Without ``fixed`` the first pick is the image nearest the mean descriptor (deterministic; the
    seed is unused and kept for a uniform signature). Cluster sizes count the images nearest each pick.
    """
    x = normalise(descriptors, centre)
    n = len(x)
    fixed = _check(n, k, fixed)
    selectable = np.ones(n, dtype=bool)
    selectable[fixed] = False
    picks: list[int] = []
    if fixed:
        nearest = _sq_dist(x, x[fixed]).min(axis=1)
    else:
        first = int(np.argmin(np.where(selectable, _sq_dist(x, x.mean(axis=0, keepdims=True))[:, 0], np.inf)))
        picks.append(first)
        nearest = _sq_dist(x, x[[first]])[:, 0]
    while len(picks) < k:
        p = int(np.argmax(np.where(selectable, nearest, -np.inf)))
        picks.append(p)
        selectable[p] = False
        nearest = np.minimum(nearest, _sq_dist(x, x[[p]])[:, 0])
    assign = _sq_dist(x, x[fixed + picks]).argmin(axis=1)
    sizes = [int((assign == len(fixed) + j).sum()) for j in range(k)]
    assignment = np.array([a - len(fixed) if a >= len(fixed) else -1 - a for a in assign], dtype=np.int64)
    return Selection(picks, sizes, assignment)


def next_round(descriptors: np.ndarray, uncertainty: np.ndarray, k: int, *, fixed: Sequence[int] = ()
               ) -> Selection:
    """The k images whose labels are least certain and least like the annotated ones.

    Greedy: each pick maximises uncertainty × (distance to the nearest fixed image or earlier
    pick), so the picks are doubtful, unlike the references and unlike each other.

    Args:
        descriptors: (N, D).
        uncertainty: (N,) ≥ 0, e.g. 1 − mean confidence of the propagated labels; NaN = unknown
            (such images are never picked).
        fixed: indices of the current references (never picked).
    """
    x = normalise(descriptors)
    n = len(x)
    fixed = _check(n, k, fixed)
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != (n,):
        raise ValueError(f"uncertainty must have shape ({n},), got {u.shape}")
    selectable = np.isfinite(u)
    selectable[fixed] = False
    if k > int(selectable.sum()):
        raise ValueError(f"cannot pick {k} of {int(selectable.sum())} images with a known confidence")
    u = np.where(selectable, np.maximum(u, 0.0), 0.0)
    if fixed:
        nearest = np.sqrt(_sq_dist(x, x[fixed]).min(axis=1)).astype(np.float64)
    else:
        nearest = np.ones(n)  # nothing annotated yet: uncertainty alone, then diversity among the picks
    picks: list[int] = []
    for _ in range(k):
        score = np.where(selectable, u * nearest, -np.inf)
        p = int(np.argmax(score))
        picks.append(p)
        selectable[p] = False
        nearest = np.minimum(nearest, np.sqrt(_sq_dist(x, x[[p]])[:, 0]))
    assign = _sq_dist(x, x[fixed + picks]).argmin(axis=1) if (fixed or picks) else np.zeros(n, dtype=np.int64)
    sizes = [int((assign == len(fixed) + j).sum()) for j in range(k)]
    assignment = np.array([a - len(fixed) if a >= len(fixed) else -1 - a for a in assign], dtype=np.int64)
    return Selection(picks, sizes, assignment)
