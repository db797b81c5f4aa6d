"""The exact-vote core against the dense Nq × Nr reference (DESIGN §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordgan_cli.correspondence.vote import prepare_references, propagate_map, vote, vote_dense


def _grid(n: int) -> np.ndarray:
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    return np.stack([x, y])


def smooth_warp(n: int, seed: int) -> np.ndarray:
    """A smooth, seeded warp of the canonical grid: (2, n, n) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x, y = _grid(n)
    a = rng.normal(0, 0.15, 4)
    warped = np.stack([x + a[0] * np.sin(np.pi * y + a[1]), y + a[2] * np.sin(np.pi * x + a[3])])
    return np.tanh(1.2 * warped).astype(np.float32)


def parts_mask(cmap: np.ndarray) -> np.ndarray:
    """Four 'parts' painted in canonical space, so masks of two warps correspond."""
    x, y = cmap
    lab = np.zeros(x.shape, np.uint8)
    r = np.hypot(x, y)
    lab[r < 0.7] = 1
    lab[(r < 0.7) & (y < -0.2)] = 2
    lab[np.hypot(x - 0.25, y + 0.1) < 0.12] = 3
    lab[np.hypot(x + 0.25, y + 0.1) < 0.12] = 4
    return lab


def _points(m: np.ndarray) -> np.ndarray:
    return m.reshape(2, -1).T


@pytest.mark.parametrize("n", [32, 64])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_vote_equals_dense(n: int, mode: str) -> None:
    ref, qry = smooth_warp(n, 1), smooth_warp(n, 2)
    refs = [(_points(ref), parts_mask(ref).ravel())]
    ours = vote(_points(qry), refs, 5, mode=mode, return_probabilities=True)
    dense = vote_dense(_points(qry), refs, 5, mode=mode, chunk=512)
    assert (ours.labels == dense.labels).mean() >= 0.995
    np.testing.assert_allclose(ours.distance, dense.distance, atol=1e-6)
    if mode == "hard":
        assert (ours.labels == dense.labels).all()
        np.testing.assert_allclose(ours.confidence, 1.0)
    else:
        assert np.abs(ours.confidence - dense.confidence).mean() < 0.01
        assert np.abs(ours.confidence - dense.confidence).max() < 0.3
        np.testing.assert_allclose(ours.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_tolerance_bounds_confidence() -> None:
    ref, qry = smooth_warp(48, 3), smooth_warp(48, 4)
    refs = [(_points(ref), parts_mask(ref).ravel())]
    ours = vote(_points(qry), refs, 5, tol=0.01)
    dense = vote_dense(_points(qry), refs, 5)
    assert (ours.labels == dense.labels).mean() >= 0.995
    assert np.abs(ours.confidence - dense.confidence).max() <= 0.01 + 1e-6


def test_soft_labels_fusion_and_ignore() -> None:
    n = 40
    r1, r2, q = smooth_warp(n, 5), smooth_warp(n, 6), smooth_warp(n, 7)
    m1, m2 = parts_mask(r1).ravel(), parts_mask(r2).ravel().copy()
    m2[::7] = 255  # ignore pixels carry no vote
    soft1 = np.eye(5, dtype=np.float32)[m1] * 0.8 + 0.2 / 5  # soft one-hot input
    refs = [(_points(r1), soft1), (_points(r2), m2)]
    ours = vote(_points(q), refs, 5)
    dense = vote_dense(_points(q), refs, 5)
    assert (ours.labels == dense.labels).mean() >= 0.995
    # The dense reference with the ignore pixels removed by hand gives the same answer.
    keep = m2 != 255
    manual = vote_dense(_points(q), [(_points(r1), soft1), (_points(r2)[keep], m2[keep])], 5)
    np.testing.assert_allclose(dense.probabilities, manual.probabilities, atol=1e-6)


def test_far_queries_and_prepared_references() -> None:
    ref = smooth_warp(24, 8)
    refs = prepare_references([(_points(ref), parts_mask(ref).ravel())], 5)
    # Queries far outside the reference's coordinates still get the exact vote.
    q = np.array([[3.0, 3.0], [-2.5, 0.1], [0.0, 0.0], [0.05, -0.9]])
    ours = vote(q, refs, 5, return_probabilities=True)
    dense = vote_dense(q, refs, 5)
    assert (ours.labels == dense.labels).all()
    np.testing.assert_allclose(ours.probabilities, dense.probabilities, atol=2e-2)
    with pytest.raises(ValueError, match="tau"):
        vote(q, refs, 5, tau=0.02)


def test_torch_path_equals_numpy(device: torch.device) -> None:
    ref, qry = smooth_warp(32, 9), smooth_warp(32, 10)
    mask = parts_mask(ref).ravel()
    for mode in ("soft", "hard"):
        np_res = vote(_points(qry), [(_points(ref), mask)], 5, mode=mode)
        t_res = vote(torch.from_numpy(_points(qry)).to(device),
                     [(torch.from_numpy(_points(ref)).to(device), torch.from_numpy(mask.astype(np.int64)).to(device))],
                     5, mode=mode)
        dense = vote_dense(_points(qry), [(_points(ref), mask)], 5, mode=mode)
        assert (t_res.labels == np_res.labels).mean() >= 0.995
        np.testing.assert_allclose(t_res.confidence, dense.confidence, atol=1e-4)
        np.testing.assert_allclose(t_res.distance, dense.distance, atol=1e-5)


def test_propagate_map_own_sizes_and_valid() -> None:
    ref, qry = smooth_warp(40, 11), smooth_warp(56, 12)  # different sizes: each at its own
    mask = parts_mask(ref)
    valid = np.ones((56, 56), bool)
    valid[:5] = False
    labels, conf, dist = propagate_map(qry, [(ref, mask)], 5, query_valid=valid, distance=True)
    assert labels.shape == conf.shape == dist.shape == (56, 56) and labels.dtype == np.uint8
    assert (labels[:5] == 0).all() and (conf[:5] == 1).all()
    dense = vote_dense(_points(qry), [(_points(ref), mask.ravel())], 5)
    assert (labels[5:].ravel() == dense.labels.reshape(56, 56)[5:].ravel()).mean() >= 0.995
    # Agreement with the true parts of the query (the maps correspond exactly).
    assert (labels == parts_mask(qry)).mean() > 0.97


def test_bad_references() -> None:
    with pytest.raises(ValueError, match="all ignore"):
        vote(np.zeros((3, 2)), [(np.zeros((4, 2)), np.full(4, 255))], 3)
    with pytest.raises(ValueError, match="class ids"):
        vote(np.zeros((3, 2)), [(np.zeros((4, 2)), np.array([0, 1, 7, 1]))], 3)


def test_near_ties_decided_exactly() -> None:
    """Queries a hair off the boundary between two mirror-image halves: their class margins
    (≈ 1e-5) lie below the float32 window arithmetic's error bound, so the vote must hand them to
    its float64 pass — and still give the dense vote's (the true) side every time."""
    g = _grid(40).reshape(2, -1).T                      # symmetric about x = 0, no pixel on it
    labels = (g[:, 0] > 0).astype(np.int64)
    rng = np.random.default_rng(0)
    side = rng.choice([-1.0, 1.0], 200)
    q = np.stack([side * 1e-7 * rng.uniform(1, 3, 200), rng.uniform(-0.5, 0.5, 200)], axis=1)
    ours = vote(q, [(g, labels)], 2, return_probabilities=True)
    dense = vote_dense(q, [(g, labels)], 2)
    np.testing.assert_array_equal(ours.labels, (side > 0).astype(np.int64))
    np.testing.assert_array_equal(ours.labels, dense.labels)
    assert np.abs(ours.probabilities[:, 1] - dense.probabilities[:, 1]).max() < 1e-4


def test_distance_only_when_asked() -> None:
    ref, qry = smooth_warp(24, 13), smooth_warp(24, 14)
    refs = [(_points(ref), parts_mask(ref).ravel())]
    with_d = vote(_points(qry), refs, 5)
    without = vote(_points(qry), refs, 5, distance=False)
    assert without.distance is None
    np.testing.assert_array_equal(with_d.labels, without.labels)
    assert propagate_map(qry, [(ref, parts_mask(ref))], 5)[2] is None
