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

    from coordgan_cli.metrics.fid import (extractor_path, folder_statistics, frechet_distance_from_features,
                                          inception_features, load_extractor)

    assert extractor_path().is_file()  # shipped inside the wheel: no download
    rng = np.random.default_rng(0)
    arrays = {}
    for folder, shift in (("a", 0), ("b", 120)):
        (tmp_path / folder).mkdir()
        arrays[folder] = []
        for i in range(3):
            arr = np.clip(rng.integers(0, 120, size=(32, 32, 3)) + shift, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / folder / f"{i}.png")
            arrays[folder].append(arr)
    cache = tmp_path / "cache"
    model = load_extractor(device)
    mu_a, s_a, n_a, cached = folder_statistics(tmp_path / "a", device=device, cache_dir=cache, batch_size=3,
                                               model=model)
    assert n_a == 3 and not cached and mu_a.shape == (2048,)
    mu_a2, s_a2, _, cached2 = folder_statistics(tmp_path / "a", device=device, cache_dir=cache)
    assert cached2 and np.array_equal(mu_a, mu_a2)
    assert not any(p.name.startswith(".") for p in cache.iterdir())  # no temp file left
    # The generated side goes through the features (as `evaluate --fid-real` does); its own
    # images give the same statistics as the folder, so FID ≈ 0 against itself.
    feats_a = inception_features([np.stack(arrays["a"])], model, device)
    feats_b = inception_features([np.stack(arrays["b"])], model, device)
    assert feats_a.shape == (3, 2048)
    assert np.allclose(feats_a.mean(axis=0), mu_a, atol=1e-4)
    assert frechet_distance_from_features(feats_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-2)
    assert frechet_distance_from_features(feats_b, mu_a, s_a) > 1.0


def test_frechet_distance_from_features_equals_the_statistics_form():
    from coordgan_cli.metrics.fid import feature_statistics, frechet_distance, frechet_distance_from_features

    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) * 0.3
    mu_r, s_r = feature_statistics(real)
    for n in (5, 39, 41, 200):  # below and above the dimension: the low-rank path and the fallback
        fake = rng.normal(size=(n, 40)) * 1.2 + 0.1
        expected = frechet_distance(*feature_statistics(fake), mu_r, s_r)
        # rel 1e-6: the statistics form takes square roots of the rank-deficient Σ1's round-off eigenvalues.
        assert frechet_distance_from_features(fake, mu_r, s_r) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_features(real[:10], *feature_statistics(real[:10])) == pytest.approx(0.0, abs=1e-5)


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


# ------------------------------------------------------------------------------------------
# Feature correlation and the ensemble inside the protocols


def _tiny_matcher(seed: int = 0):
    from coordgan_cli.config import MatcherConfig
    from coordgan_cli.training.matcher import build_matcher

    torch.manual_seed(seed)
    return build_matcher(MatcherConfig(channels=8, width=4, depth=1, k=16)).eval()


def test_feature_correlation_equals_the_propagate_path_and_warps_soft_labels():
    from coordgan_cli.correspondence.correlation import correlation_probabilities, prepare_correlation_references
    from coordgan_cli.metrics.protocol import FeatureCorrelation, soft_one_hot

    rng = np.random.default_rng(0)
    net = _tiny_matcher()
    ref_img = rng.integers(0, 255, (12, 14, 3)).astype(np.uint8)
    ref_mask = rng.integers(0, 4, (12, 14)).astype(np.uint8)
    ref_mask[0, :5] = 255  # ignore pixels: no candidate position
    query = rng.integers(0, 255, (10, 9, 3)).astype(np.uint8)
    corr = FeatureCorrelation(net, tau=0.05, k=16, patch=True)
    onehot = soft_one_hot(ref_mask, 4, ref_mask.shape)[:4]
    ours = corr.probabilities(query, corr.prepare([(ref_img, onehot)]))
    prepared = prepare_correlation_references([(ref_img, ref_mask)], net, 4, patch=True)
    theirs = correlation_probabilities(query, prepared, net, tau=0.05, k=16, patch=True).numpy()
    assert ours.shape == (4, 10, 9)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # Features computed once can be reused: the same numbers.
    np.testing.assert_allclose(corr.probabilities(corr.features(query), corr.prepare([(ref_img, onehot)])), ours,
                               atol=1e-7)
    # Soft labels are warped as given: every pixel carries the labels' mass (here 0.5).
    half = corr.probabilities(query, corr.prepare([(ref_img, onehot * 0.5)]))
    np.testing.assert_allclose(half.sum(axis=0), 0.5, atol=1e-5)


def test_vote_labels_with_probabilities_agree_with_labels_only():
    from coordgan_cli.metrics.protocol import _vote_labels
    from test_vote import parts_mask, smooth_warp

    ref_map, q_map = smooth_warp(20, 1), smooth_warp(20, 2)
    labels = np.eye(5, dtype=np.float32)[parts_mask(ref_map).reshape(-1)]
    scored = parts_mask(q_map) > 0
    for mode in ("soft", "hard"):
        plain = _vote_labels(q_map, [(ref_map.reshape(2, -1).T, labels)], 5, 0.01, mode, scored=scored)
        lab, shares = _vote_labels(q_map, [(ref_map.reshape(2, -1).T, labels)], 5, 0.01, mode, scored=scored,
                                   with_probabilities=True)
        assert np.array_equal(plain, lab) and shares.shape == (5, 20, 20)
        np.testing.assert_allclose(shares.sum(axis=0), 1.0, atol=1e-5)
        assert np.all(shares[0][~scored] == 1.0)  # unscored pixels: background
        assert np.array_equal(shares.argmax(axis=0)[scored], lab[scored])


def test_paper_protocol_correlation_and_ensemble_match_a_hand_fusion(tmp_path):
    """run_paper's correlation / ensemble IoU equal a straightforward recomputation: per
    reference, resize, warp soft labels, average with the exact (refined) vote shares, score."""
    from coordgan_cli.correspondence.ensemble import fuse_probabilities
    from coordgan_cli.correspondence.vote import vote
    from coordgan_cli.data.benchmarks import load_benchmark
    from coordgan_cli.io.images import read_image
    from coordgan_cli.io.store import StoreReader
    from coordgan_cli.metrics.protocol import (FeatureCorrelation, hard_labels, resize_image, resize_map, run_paper,
                                               soft_one_hot)
    from test_evaluate import make_synthetic

    root = make_synthetic(tmp_path / "syn", count=4, size=24)
    bench = load_benchmark("synthetic", root, refs=["000000", "000001"], queries=2)
    corr = FeatureCorrelation(_tiny_matcher(3), tau=0.02, k=24, patch=False)
    reader = StoreReader(root / "correspondence.h5")

    class Maps:
        def map(self, s, size):
            return resize_map(reader.correspondence(reader.index(s.name)), size)

        def valid(self, s, size):
            return None

    size = 20
    result = run_paper(bench, Maps(), tau=0.05, size=size, correlation=corr)
    c = bench.num_classes
    hand = {k: {r.name: IoUAccumulator(c) for r in bench.references} for k in ("correlation", "ensemble")}
    for q in bench.queries:
        truth = hard_labels(soft_one_hot(bench.read_mask(q), c, (size, size)))
        q_img = resize_image(read_image(q.image), (size, size))
        q_pts = Maps().map(q, (size, size)).reshape(2, -1).T
        for r in bench.references:
            soft = soft_one_hot(bench.read_mask(r), c, (size, size))[:c]
            warped = corr.probabilities(q_img, corr.prepare([(resize_image(read_image(r.image), (size, size)), soft)]))
            # The vote over every pixel and every class (no scoring shortcut, no class compaction).
            res = vote(q_pts, [(Maps().map(r, (size, size)).reshape(2, -1).T, soft.reshape(c, -1).T)], c, tau=0.05,
                       return_probabilities=True, tol=1e-4)
            shares = res.probabilities.T.reshape(c, size, size)
            hand["correlation"][r.name].update(warped.argmax(axis=0).astype(np.uint8), truth)
            hand["ensemble"][r.name].update(fuse_probabilities(shares, warped)[0], truth)
    reader.close()
    for key in ("correlation", "ensemble"):
        expected = summarize(hand[key], c, bench.exclude)
        assert result.matchers[key].miou == pytest.approx(expected.miou, abs=1e-9)
        assert result.matchers[key].per_class == pytest.approx(expected.per_class, abs=1e-9)
    assert set(result.matchers) == {"correlation", "ensemble"} and result.maps.miou > 0.5


# ------------------------------------------------------------------------------------------
# Generation metrics (swap pairing, reconstruction) on stand-in models with known answers


class _SwapModel:
    """Images that show their structure code in channel 0 and their texture code in channel 1."""

    latent_dim = 2
    device = torch.device("cpu")

    class generator:  # noqa: N801 - mimics CorrespondenceModel.generator
        size = 8

        @staticmethod
        def map_structure(z):
            return z

        @staticmethod
        def map_texture(z):
            return z

        @staticmethod
        def texture_plus(w):
            return w[:, None, :]

    @staticmethod
    def synthesize(w_s, w_t):
        b = w_s.shape[0]
        img = torch.zeros(b, 3, 8, 8)
        img[:, 0] = torch.tanh(w_s[:, 0]).reshape(b, 1, 1)
        img[:, 1] = torch.tanh(w_t[:, 0, 0]).reshape(b, 1, 1)
        return img


class _ChannelDistance(torch.nn.Module):
    """Mean absolute difference of one channel: (B,)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x, y):
        return (x[:, self.channel] - y[:, self.channel]).abs().flatten(1).mean(dim=1)


def test_swap_distances_pair_the_right_codes_and_are_deterministic():
    from coordgan_cli.metrics.generation import perceptual_input, swap_distances

    model = _SwapModel()
    on_structure = swap_distances(model, _ChannelDistance(0), pairs=7, seed=5, batch_size=3)
    # A texture swap keeps the structure code: channel 0 is unchanged, exactly.
    assert on_structure["texture_swap"]["mean"] == 0.0 and on_structure["texture_swap"]["pairs"] == 7
    assert on_structure["structure_swap"]["mean"] > 0.1
    on_texture = swap_distances(model, _ChannelDistance(1), pairs=7, seed=5, batch_size=7)
    assert on_texture["structure_swap"]["mean"] == 0.0 and on_texture["texture_swap"]["mean"] > 0.1
    assert on_texture["identity"]["available"] is False and "identity" in on_texture["identity"]["reason"]
    again = swap_distances(model, _ChannelDistance(0), pairs=7, seed=5, batch_size=7)
    assert again["structure_swap"] == pytest.approx(on_structure["structure_swap"])  # batching does not matter
    other = swap_distances(model, _ChannelDistance(0), pairs=7, seed=6)
    assert other["structure_swap"]["mean"] != on_structure["structure_swap"]["mean"]
    assert perceptual_input(torch.zeros(1, 3, 8, 16)).shape == (1, 3, 64, 128)


def test_reconstruction_errors_by_hand():
    from coordgan_cli.inference import images_to_tensor
    from coordgan_cli.metrics.generation import reconstruction_errors

    class Offset:
        """Reconstructs every image exactly, plus a constant offset in [-1, 1] units."""

        device = torch.device("cpu")

        class generator:  # noqa: N801
            size = 16

        def __init__(self, offset: float) -> None:
            self.offset = offset

        def encode_tensor(self, images):
            return images_to_tensor(images, 16, self.device), None

        def synthesize(self, s, t):
            return s + self.offset

    rng = np.random.default_rng(0)
    images = [rng.integers(90, 160, (20 + i, 24, 3)).astype(np.uint8) for i in range(3)]
    exact = reconstruction_errors(Offset(0.0), images, _ChannelDistance(0), batch_size=2)
    assert exact["mse"] == 0.0 and exact["psnr"] is None and exact["images"] == 3 and exact["size"] == 16
    assert exact["perceptual"]["mean"] == 0.0
    off = reconstruction_errors(Offset(0.2), images, _ChannelDistance(0), batch_size=2)
    # 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, PSNR 20 dB; channel-0 distance 0.2.
    assert off["mse"] == pytest.approx(0.01, rel=1e-5) and off["psnr"] == pytest.approx(20.0, rel=1e-4)
    assert off["perceptual"]["mean"] == pytest.approx(0.2, rel=1e-5)


def test_cosine_nn_pooled_matches_a_per_pixel_loop():
    import torch.nn.functional as F

    from coordgan_cli.metrics.iou import IGNORE
    from coordgan_cli.metrics.protocol import cosine_nn_labels, cosine_nn_pooled, cosine_pool

    rng = np.random.default_rng(0)
    refs = [(rng.normal(size=(5, 4, 4)).astype(np.float32), rng.integers(0, 4, (8, 8))),
            (rng.normal(size=(5, 3, 5)).astype(np.float32), rng.integers(0, 4, (6, 10)))]
    refs[0][1][0, :3] = IGNORE  # ignored pixels are never copied
    query = rng.normal(size=(5, 4, 4)).astype(np.float32)
    size = (7, 9)
    got = cosine_nn_pooled(refs, query, size, chunk=5)
    np.testing.assert_array_equal(cosine_nn_pooled(cosine_pool(refs), query, size), got)  # prepared once

    def unit(f, hw):  # (C, h, w) → (H, W, C) unit vectors, bilinear as documented
        t = F.interpolate(torch.from_numpy(f)[None], size=hw, mode="bilinear", align_corners=False)[0]
        return F.normalize(t, dim=0).permute(1, 2, 0).numpy()

    pool = [(unit(f, lab.shape), lab) for f, lab in refs]
    q = unit(query, size)
    for y in range(size[0]):
        for x in range(size[1]):
            best, label = -np.inf, None
            for feats, lab in pool:
                for i in range(lab.shape[0]):
                    for j in range(lab.shape[1]):
                        if lab[i, j] == IGNORE:
                            continue
                        sim = float(q[y, x] @ feats[i, j])
                        if sim > best:
                            best, label = sim, lab[i, j]
            assert got[y, x] == label, (y, x)
    # One reference at the query's size: the same as the paper protocol's cosine_nn_labels.
    lab = rng.integers(0, 4, size)
    np.testing.assert_array_equal(cosine_nn_pooled([(refs[0][0], lab)], query, size),
                                  cosine_nn_labels(refs[0][0], query, lab.reshape(-1), size))
