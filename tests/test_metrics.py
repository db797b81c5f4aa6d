"""Metrics: the paper's IoU rules on a hand-computed example, keypoints/EPE, FID offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordgan_cli.metrics.iou import IoUAccumulator, intersection_union, summarize
from coordgan_cli.metrics.keypoints import end_point_error, pck, pooled_pck, sample_map, transfer_keypoints


def _hand_example():
    """5 classes (0 background, 1..4); class 4 excluded from the mean; class 3 never present.

    Reference A, query 1 (255 = ignore in the truth):
        truth [[0, 1, 1, 2], [0, 1, 2, 255]]   pred [[1, 1, 2, 2], [4, 1, 2, 1]]
      (0,0) and (1,0) predict 1 and 4 on truth background → ignored; (1,3) truth 255 → ignored.
      class 1: I = 2, pred area 2, true area 3 → U = 3;  class 2: I = 2, pred 3, true 2 → U = 3.
    Reference A, query 2:
        truth [[2, 2, 4, 4], [1, 0, 4, 0]]     pred [[2, 1, 4, 255], [1, 3, 2, 0]]
      (1,1) predicts 3 on background → ignored (else class 3 would get a union of 1);
      (0,3) predicts 255 = no class → a miss for class 4.
      class 1: I = 1, pred 2, true 1 → U = 2;  class 2: I = 1, pred 2, true 2 → U = 3;
      class 4: I = 1, pred 1, true 3 → U = 3 (excluded).
    Reference A totals: class 1: 3/5 = 0.6, class 2: 3/6 = 0.5, class 3: union 0 → 0.
      mIoU_A = (0.6 + 0.5 + 0) / 3 = 11/30.  (A mean of per-image IoUs would give class 1
      (2/3 + 1/2)/2 ≠ 0.6: the sums must be pooled first.)
    Reference B, one query: truth [[1, 1]], pred [[1, 0]] → class 1: 1/2; others 0.
      mIoU_B = 0.5 / 3 = 1/6.
    Final: (11/30 + 1/6) / 2 = 4/15; per class: 1 → 0.55, 2 → 0.25, 3 → 0.
    """
    a1 = (np.array([[1, 1, 2, 2], [4, 1, 2, 1]]), np.array([[0, 1, 1, 2], [0, 1, 2, 255]]))
    a2 = (np.array([[2, 1, 4, 255], [1, 3, 2, 0]]), np.array([[2, 2, 4, 4], [1, 0, 4, 0]]))
    b1 = (np.array([[1, 0]]), np.array([[1, 1]]))
    return a1, a2, b1


def test_intersection_union_single_query_by_hand():
    (pred, truth), _, _ = _hand_example()
    inter, union = intersection_union(pred, truth, 5)
    assert inter.tolist() == [0, 2, 2, 0, 0]
    assert union.tolist() == [0, 3, 3, 0, 0]


def test_paper_iou_hand_computed_every_rule():
    a1, a2, b1 = _hand_example()
    acc_a, acc_b = IoUAccumulator(5), IoUAccumulator(5)
    acc_a.update(*a1)
    acc_a.update(*a2)
    acc_b.update(*b1)
    assert acc_a.intersection.tolist() == [0, 3, 3, 0, 1]
    assert acc_a.union.tolist() == [0, 5, 6, 0, 3]
    res = summarize({"A": acc_a, "B": acc_b}, 5, exclude={4})
    assert res.classes == [1, 2, 3]
    assert res.per_reference["A"]["miou"] == pytest.approx(11 / 30)
    assert res.per_reference["B"]["miou"] == pytest.approx(1 / 6)
    assert res.per_reference["A"]["queries"] == 2
    assert res.per_class == pytest.approx({1: 0.55, 2: 0.25, 3: 0.0})
    assert res.miou == pytest.approx(4 / 15)
    # Without the exclusion class 4 (1/3 for A, 0 for B) enters the mean.
    res_all = summarize({"A": acc_a, "B": acc_b}, 5)
    assert res_all.miou == pytest.approx(((0.6 + 0.5 + 0 + 1 / 3) / 4 + 0.5 / 4) / 2)


def test_iou_matches_slow_reference_on_random_maps():
    rng = np.random.default_rng(0)
    c = 6
    acc = IoUAccumulator(c)
    pairs = []
    for _ in range(4):
        truth = rng.integers(0, c, size=(9, 7))
        truth[rng.random(truth.shape) < 0.1] = 255
        pred = rng.integers(0, c, size=(9, 7))
        pred[rng.random(pred.shape) < 0.05] = 255
        acc.update(pred, truth)
        pairs.append((pred, truth))
    for k in range(1, c):
        inter = union = 0
        for pred, truth in pairs:
            for p, t in zip(pred.ravel(), truth.ravel()):
                if t == 255 or t == 0:
                    continue  # ignored pixel, or a prediction on background
                inter += int(p == k and t == k)
                union += int(p == k or t == k)
        assert acc.intersection[k] == inter and acc.union[k] == union


def test_sample_map_and_keypoint_transfer_on_shifted_grid():
    h, w = 12, 16
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    ref = np.stack([xs / (w - 1) * 2 - 1, ys / (h - 1) * 2 - 1])
    # The query sees the same frame shifted by 3 pixels right and 2 down.
    query = np.stack([(xs - 3) / (w - 1) * 2 - 1, (ys - 2) / (h - 1) * 2 - 1])
    pts = np.array([[2.0, 3.0], [5.5, 4.0], [10.0, 8.0]])
    assert np.allclose(sample_map(ref, pts)[:, 0], pts[:, 0] / (w - 1) * 2 - 1)
    moved, dist = transfer_keypoints(ref, query, pts[[0, 2]])
    assert moved.tolist() == [[5.0, 5.0], [13.0, 10.0]]
    assert np.allclose(dist, 0)


def test_pck_thresholds_and_pooling():
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    pred = truth + np.array([[3.0, 0.0], [0.0, 6.0], [30.0, 0.0]])
    counts = pck(pred, truth, (50, 100), (0.05, 0.1))  # thresholds 5 and 10 px
    assert counts == {0.05: (1, 3), 0.1: (2, 3)}
    counts2 = pck(pred, truth, (50, 100), (0.05, 0.1), mask=np.array([True, False, False]))
    assert pooled_pck([counts, counts2]) == {"0.05": 2 / 4, "0.1": 3 / 4}


def test_end_point_error_units():
    true = np.zeros((2, 5, 9))
    pred = true.copy()
    pred[0] += 0.25  # x off by 0.25 canonical → 0.25 × (9 − 1)/2 = 1 px
    valid = np.zeros((5, 9), dtype=bool)
    valid[1:3] = True
    can, pix, n = end_point_error(pred, true, valid)
    assert n == 18
    assert can / n == pytest.approx(0.25) and pix / n == pytest.approx(1.0)


def test_fid_runs_offline_and_caches(tmp_path, device):
    from PIL import Image

    from coordgan_cli.metrics.fid import extractor_path, folder_statistics, frechet_distance

    assert extractor_path().is_file()  # shipped inside the wheel: no download
    rng = np.random.default_rng(0)
    for folder, shift in (("a", 0), ("b", 120)):
        (tmp_path / folder).mkdir()
        for i in range(3):
            arr = np.clip(rng.integers(0, 120, size=(32, 32, 3)) + shift, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / folder / f"{i}.png")
    cache = tmp_path / "cache"
    mu_a, s_a, n_a, cached = folder_statistics(tmp_path / "a", device=device, cache_dir=cache, batch_size=3)
    assert n_a == 3 and not cached and mu_a.shape == (2048,)
    mu_a2, s_a2, _, cached2 = folder_statistics(tmp_path / "a", device=device, cache_dir=cache)
    assert cached2 and np.array_equal(mu_a, mu_a2)
    assert not any(p.name.startswith(".") for p in cache.iterdir())  # no temp file left
    mu_b, s_b, _, _ = folder_statistics(tmp_path / "b", device=device, batch_size=3)
    assert frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(mu_a, s_a, mu_b, s_b) > 1.0


def test_frechet_distance_matches_the_matrix_square_root_form():
    import scipy.linalg

    from coordgan_cli.metrics.fid import frechet_distance

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(150, 16)) * 1.5 + 0.2
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2) - 2 * np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)
