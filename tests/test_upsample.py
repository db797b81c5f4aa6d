"""Guided filter and the upsampling of class probabilities (correspondence/upsample.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from coordgan_cli.correspondence.upsample import default_radius, guided_filter, upsample_probabilities


def _window_mean(x: np.ndarray, i: int, j: int, r: int) -> np.ndarray:
    """Mean over the (2r+1)² window of (i, j), clipped at the border; x is (H, W) or (H, W, C)."""
    return x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].reshape(-1, *x.shape[2:]).mean(axis=0)


def _guided_filter_slow(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s algorithm written out per pixel, in float64: a linear model per window, then
    the average of the models covering each pixel."""
    guide = guide.astype(np.float64)
    src = src.astype(np.float64)
    h, w = src.shape
    colour = guide.ndim == 3
    a = np.zeros((h, w, 3) if colour else (h, w))
    b = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            gi = guide[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1]
            pi = src[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1]
            if colour:
                g = gi.reshape(-1, 3)
                p = pi.reshape(-1)
                mu = g.mean(axis=0)
                sigma = (g - mu).T @ (g - mu) / len(g)
                cov = ((g - mu) * (p - p.mean())[:, None]).mean(axis=0)
                a[i, j] = np.linalg.solve(sigma + eps * np.eye(3), cov)
                b[i, j] = p.mean() - a[i, j] @ mu
            else:
                a[i, j] = ((gi * pi).mean() - gi.mean() * pi.mean()) / (gi.var() + eps)
                b[i, j] = pi.mean() - a[i, j] * gi.mean()
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            mean_a = _window_mean(a, i, j, r)
            out[i, j] = (mean_a * guide[i, j]).sum() + _window_mean(b, i, j, r)
    return out


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("radius", [1, 2])
def test_guided_filter_matches_per_pixel_reference(colour, radius):
    rng = np.random.default_rng(0)
    guide = rng.random((7, 9, 3) if colour else (7, 9)).astype(np.float32)
    src = rng.random((7, 9)).astype(np.float32)
    fast = guided_filter(guide, src, radius, 1e-2)
    slow = _guided_filter_slow(guide, src, radius, 1e-2)
    assert fast.shape == (7, 9) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, atol=2e-4)
    # The filter is not the identity here: the reference check has something to catch.
    assert np.abs(fast - src).max() > 0.05


def test_guided_filter_planes_are_filtered_independently_and_uint8_is_scaled():
    rng = np.random.default_rng(1)
    guide = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    src = rng.random((3, 8, 6)).astype(np.float32)
    stacked = guided_filter(guide, src, 1, 1e-3)
    for k in range(3):
        np.testing.assert_allclose(stacked[k], guided_filter(guide.astype(np.float32) / 255, src[k], 1, 1e-3),
                                   atol=1e-5)


def test_guided_filter_rejects_mismatched_guide():
    with pytest.raises(ValueError, match="guide must be"):
        guided_filter(np.zeros((4, 5), np.float32), np.zeros((4, 6), np.float32), 1, 1e-3)


def _disc_scene(size: int = 96):
    """A bright noisy disc on a dark noisy background, and its true mask."""
    yy, xx = np.mgrid[:size, :size]
    truth = (yy - 41) ** 2 + (xx - 53) ** 2 < 27 ** 2
    rng = np.random.default_rng(0)
    grey = np.clip(np.where(truth, 200.0, 60.0) + rng.normal(0, 8, truth.shape), 0, 255).astype(np.uint8)
    return np.stack([grey] * 3, axis=-1), truth


def _iou(probs: np.ndarray, truth: np.ndarray) -> float:
    mask = probs.argmax(axis=0) == 1
    return float((mask & truth).sum() / (mask | truth).sum())


@pytest.mark.parametrize("low", [12, 16])
def test_guided_refinement_puts_the_boundary_on_the_image_edge(low):
    image, truth = _disc_scene()
    # Low-resolution, blurred probabilities of the disc (what a matcher at its work size gives).
    p = cv2.GaussianBlur(cv2.resize(truth.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA), (3, 3), 1.0)
    probs = np.stack([1 - p, p]).astype(np.float32)
    bilinear = upsample_probabilities(probs, truth.shape)
    refined = upsample_probabilities(probs, truth.shape, image)
    assert bilinear.shape == refined.shape == (2, 96, 96)
    assert _iou(refined, truth) > _iou(bilinear, truth) + 0.02
    assert _iou(refined, truth) > 0.99


def test_upsampled_probabilities_sum_to_one_and_are_non_negative():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 6, 4)).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    guide = rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)
    for g in (None, guide):
        up = upsample_probabilities(probs, (61, 97), g)
        assert up.shape == (5, 61, 97) and up.dtype == np.float32
        assert up.min() >= 0
        np.testing.assert_allclose(up.sum(axis=0), 1.0, atol=1e-5)


def test_constant_probabilities_stay_constant():
    probs = np.empty((3, 5, 7), np.float32)
    probs[:] = np.array([0.2, 0.5, 0.3], np.float32)[:, None, None]
    guide = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    up = upsample_probabilities(probs, (40, 56), guide)
    np.testing.assert_allclose(up, np.broadcast_to(probs[:, :1, :1], up.shape), atol=1e-5)


def test_same_size_without_guide_is_unchanged_and_default_radius_follows_scale():
    probs = np.random.default_rng(4).random((2, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(upsample_probabilities(probs, (9, 9)), probs)
    assert default_radius((64, 64), (64, 64)) == 1
    assert default_radius((64, 64), (512, 512)) == 8
    assert default_radius((64, 48), (600, 800)) == 17
