"""Selection of images to annotate (``selection.select``): against slow references, determinism, exclusion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coordgan_cli.selection.select import farthest_first, next_round, normalise, representatives


def blobs(sizes=(12, 8, 5), dim=16, spread=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated groups: (N, dim) descriptors and (N,) group ids."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)] * 3.0 + 1.0  # a shared offset, as CNN features have
    x = np.concatenate([c + spread * rng.standard_normal((n, dim)) for c, n in zip(centres, sizes)])
    return x, np.repeat(np.arange(len(sizes)), sizes)


def medoid_cost(x: np.ndarray, medoids: list[int]) -> float:
    y = normalise(x)
    d = ((y[:, None, :] - y[None, medoids, :]) ** 2).sum(-1)
    return float(d.min(axis=1).sum())


def test_normalise_centres_then_scales() -> None:
    x = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    y = normalise(x)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(y, centred / np.linalg.norm(centred, axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError):
        normalise(np.zeros(3))


def test_representatives_one_pick_per_group_with_its_size() -> None:
    x, group = blobs()
    sel = representatives(x, 3, seed=0)
    assert sorted(group[sel.indices].tolist()) == [0, 1, 2]
    assert sel.cluster_sizes == [12, 8, 5]  # largest first
    assert [group[i] for i in sel.indices] == [0, 1, 2]
    np.testing.assert_allclose(sel.shares(len(x)), [12 / 25, 8 / 25, 5 / 25])
    assert sel.assignment.tolist() == group.tolist()


def test_representatives_match_exhaustive_k_medoids() -> None:
    # Slow reference: the best medoid set over all C(N, k) choices. On data with a clear cluster
    # structure the k-means++/Lloyd/nearest-member picks reach the same cost.
    x, _ = blobs(sizes=(6, 5, 4), dim=6, spread=0.3, seed=3)
    best = min(medoid_cost(x, list(c)) for c in itertools.combinations(range(len(x)), 3))
    sel = representatives(x, 3, seed=1)
    assert medoid_cost(x, sel.indices) == pytest.approx(best, rel=0.05)


def test_representatives_are_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 12))  # no clear clusters: the seed matters
    a = representatives(x, 6, seed=3)
    b = representatives(x, 6, seed=3)
    assert a.indices == b.indices and a.cluster_sizes == b.cluster_sizes
    assert len(set(a.indices)) == 6 and sum(a.cluster_sizes) == 200
    others = {tuple(representatives(x, 6, seed=s, restarts=1).indices) for s in range(6)}
    assert len(others) > 1  # the seed is really used


def test_representatives_exclusion_covers_the_rest() -> None:
    x, group = blobs()
    fixed = [0, 3]  # two images of group 0 are already annotated
    sel = representatives(x, 2, fixed=fixed, seed=0)
    assert not set(sel.indices) & set(fixed)
    assert sorted(group[sel.indices].tolist()) == [1, 2]  # the picks cover what the fixed images do not
    assert sel.cluster_sizes == [8, 5]
    assert (sel.assignment[group == 0] < 0).all()  # group 0 stands with the fixed images


def test_representatives_errors() -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match="cannot pick"):
        representatives(x, 25, fixed=[0])
    with pytest.raises(ValueError, match="k must be"):
        representatives(x, 0)
    with pytest.raises(ValueError, match="fixed indices"):
        representatives(x, 2, fixed=[99])


def _farthest_reference(x: np.ndarray, k: int, fixed: list[int]) -> list[int]:
    y = normalise(x)
    chosen = list(fixed)
    picks: list[int] = []
    if not chosen:
        mean = y.mean(axis=0)
        first = min(range(len(y)), key=lambda i: (float(((y[i] - mean) ** 2).sum()), i))
        picks.append(first)
        chosen.append(first)
    while len(picks) < k:
        best, best_d = -1, -1.0
        for i in range(len(y)):
            if i in chosen:
                continue
            d = min(float(((y[i] - y[j]) ** 2).sum()) for j in chosen)
            if d > best_d + 1e-7:
                best, best_d = i, d
        picks.append(best)
        chosen.append(best)
    return picks


@pytest.mark.parametrize("fixed", [[], [4, 17]])
def test_farthest_first_matches_a_slow_reference(fixed: list[int]) -> None:
    x = np.random.default_rng(2).standard_normal((40, 5))
    sel = farthest_first(x, 5, fixed=fixed)
    assert sel.indices == _farthest_reference(x, 5, fixed)
    # Every image stands with its nearest pick or fixed image.
    assert sum(sel.cluster_sizes) + int((sel.assignment < 0).sum()) == 40
    assert sel.cluster_sizes == [int((sel.assignment == j).sum()) for j in range(5)]


def _next_round_reference(x: np.ndarray, u: np.ndarray, k: int, fixed: list[int]) -> list[int]:
    y = normalise(x)
    chosen = list(fixed)
    picks: list[int] = []
    for _ in range(k):
        scores = {}
        for i in range(len(y)):
            if i in chosen or not np.isfinite(u[i]):
                continue
            d = min(float(np.linalg.norm(y[i] - y[j])) for j in chosen) if chosen else 1.0
            scores[i] = u[i] * d
        best = max(scores, key=lambda i: (scores[i], -i))
        picks.append(best)
        chosen.append(best)
    return picks


def test_next_round_matches_a_slow_reference_and_skips_unknowns() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 6))
    u = rng.uniform(0, 1, 30)
    u[[2, 9]] = np.nan  # not labelled in the run
    sel = next_round(x, u, 4, fixed=[0, 1])
    assert sel.indices == _next_round_reference(x, u, 4, [0, 1])
    assert not set(sel.indices) & {0, 1, 2, 9}


def test_next_round_prefers_doubtful_images_unlike_the_references() -> None:
    x, group = blobs()
    u = np.full(len(x), 0.2)
    u[group == 0] = 0.9     # doubtful, but the same kind as the references
    u[group == 2] = 0.6     # doubtful and unlike them
    sel = next_round(x, u, 2, fixed=[0, 1, 2])
    assert group[sel.indices[0]] == 2
    # The second pick is unlike both the references and the first pick: group 1, not group 2 again.
    assert group[sel.indices[1]] == 1
    with pytest.raises(ValueError, match="known confidence"):
        next_round(x, np.full(len(x), np.nan), 1)


def test_representatives_on_a_sample_still_pick_over_all_images() -> None:
    x, group = blobs(sizes=(120, 80, 50))
    full = representatives(x, 3, seed=0)
    sampled = representatives(x, 3, seed=0, sample=40)  # seeding + Lloyd on 40 of 250 rows
    assert sorted(group[sampled.indices].tolist()) == [0, 1, 2]
    assert sampled.cluster_sizes == full.cluster_sizes == [120, 80, 50]
    assert sampled.indices == representatives(x, 3, seed=0, sample=40).indices  # deterministic
    fixed = list(range(10))
    excl = representatives(x, 2, fixed=fixed, seed=0, sample=40)
    assert sorted(group[excl.indices].tolist()) == [1, 2] and not set(excl.indices) & set(fixed)
