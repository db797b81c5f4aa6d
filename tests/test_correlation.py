"""Correlation matching, the matcher network and the marginal contrastive loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coordgan_cli.correspondence.contrastive import marginal_contrastive_loss, sample_positive_pairs
from coordgan_cli.correspondence.correlation import (
    correlation_chunked,
    correlation_dense,
    normalise_features,
    one_hot_mask,
    propagate_correlation,
)
from coordgan_cli.models.matcher import FeatureMatcher


def _features(device, d=8, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish random features so that the softmax is neither one-hot nor uniform.
    f = torch.randn(d, h, w, generator=g)
    return F.avg_pool2d(f.unsqueeze(0), 3, 1, 1).squeeze(0).to(device)


# --- normalisation ----------------------------------------------------------------------------

def test_normalise_features_centres_and_unit_norm(device):
    f = _features(device) * 5 + 3
    n = normalise_features(f)
    assert torch.allclose(n.norm(dim=0), torch.ones(9, 11, device=device), atol=1e-5)
    # Centred before normalising: the channel mean of the result is zero.
    assert torch.allclose(n.mean(dim=0), torch.zeros(9, 11, device=device), atol=1e-6)


def test_normalise_features_patch_stacks_3x3_neighbours(device):
    f = _features(device, d=2, h=5, w=6)
    n = normalise_features(f, patch=True)
    assert n.shape == (18, 5, 6)
    centred = f - f.mean(dim=0, keepdim=True)
    # At an interior pixel the patch vector is the 3×3 window of centred features, normalised.
    window = centred[:, 1:4, 2:5].reshape(2, 9).reshape(-1)
    expected = window / window.norm()
    assert torch.allclose(n[:, 2, 3], expected, atol=1e-6)


# --- chunked / top-k against the dense reference ------------------------------------------------

@pytest.mark.parametrize("patch", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 50, 1 << 22])
def test_chunked_with_full_k_equals_dense(device, patch, chunk_elements):
    q, r = _features(device, seed=1), _features(device, h=7, w=8, seed=2)
    mask = torch.randint(0, 4, (7, 8), generator=torch.Generator().manual_seed(3)).to(device)
    onehot = one_hot_mask(mask, 4)
    image = torch.rand(3, 7, 8, generator=torch.Generator().manual_seed(4)).to(device)
    dense = correlation_dense(q, r, onehot, tau=0.05, ref_image=image, patch=patch)
    chunked = correlation_chunked(q, r, onehot, tau=0.05, k=56, ref_image=image, patch=patch,
                                  chunk_elements=chunk_elements)
    assert dense.probabilities.shape == (4, 9, 11) and dense.image.shape == (3, 9, 11)
    assert torch.allclose(chunked.probabilities, dense.probabilities, atol=1e-5)
    assert torch.allclose(chunked.image, dense.image, atol=1e-5)
    assert torch.allclose(chunked.confidence, dense.confidence, atol=1e-5)
    # Warped one-hot labels are a distribution at every pixel.
    assert torch.allclose(dense.probabilities.sum(0), torch.ones(9, 11, device=device), atol=1e-5)
    exact = correlation_chunked(q, r, onehot, tau=0.05, k=None, ref_image=image, patch=patch,
                                chunk_elements=chunk_elements)
    assert torch.allclose(exact.probabilities, dense.probabilities, atol=1e-5)
    assert torch.allclose(exact.image, dense.image, atol=1e-5)


def test_dense_matches_explicit_softmax_formula(device):
    """The dense reference itself against a per-pixel loop over the definition."""
    q, r = _features(device, d=4, h=3, w=4, seed=5), _features(device, d=4, h=2, w=3, seed=6)
    onehot = one_hot_mask(torch.tensor([[0, 1, 2], [2, 1, 0]], device=device), 3)
    out = correlation_dense(q, r, onehot, tau=0.1)
    for y in range(3):
        for x in range(4):
            fq = q[:, y, x] - q[:, y, x].mean()
            fq = fq / fq.norm()
            sims = []
            for yr in range(2):
                for xr in range(3):
                    fr = r[:, yr, xr] - r[:, yr, xr].mean()
                    sims.append(float(fq @ (fr / fr.norm())))
            weights = np.exp(np.array(sims) / 0.1)
            weights /= weights.sum()
            expected = weights @ onehot.reshape(3, -1).t().cpu().numpy()
            assert np.allclose(out.probabilities[:, y, x].cpu().numpy(), expected, atol=1e-5)


def test_topk_at_low_temperature_agrees_with_dense(device):
    q, r = _features(device, d=16, h=16, w=16, seed=7), _features(device, d=16, h=16, w=16, seed=8)
    mask = (torch.arange(16, device=device).view(1, 16) // 4).expand(16, 16)
    onehot = one_hot_mask(mask, 4)
    dense = correlation_dense(q, r, onehot, tau=0.01)
    topk = correlation_chunked(q, r, onehot, tau=0.01, k=16, chunk_elements=1000)
    agreement = (dense.probabilities.argmax(0) == topk.probabilities.argmax(0)).float().mean()
    assert agreement >= 0.99
    assert (dense.probabilities - topk.probabilities).abs().max() < 0.05


def test_chunked_is_deterministic(device):
    q, r = _features(device, seed=9), _features(device, seed=10)
    onehot = one_hot_mask(torch.randint(0, 3, (9, 11), generator=torch.Generator().manual_seed(0)).to(device), 3)
    a = correlation_chunked(q, r, onehot, k=5, chunk_elements=77)
    b = correlation_chunked(q, r, onehot, k=5, chunk_elements=77)
    assert torch.equal(a.probabilities, b.probabilities)


def test_one_hot_mask_ignore_and_bad_id(device):
    mask = torch.tensor([[0, 1], [255, 2]], device=device)
    onehot = one_hot_mask(mask, 3)
    assert onehot[:, 1, 0].sum() == 0 and onehot[2, 1, 1] == 1
    with pytest.raises(Exception, match="class id 2 but only 2 classes"):
        one_hot_mask(mask, 2)


# --- propagate_correlation --------------------------------------------------------------------

class _PositionMatcher(torch.nn.Module):
    """A stand-in matcher whose features encode the pixel position (Fourier features of x, y
    in [-1, 1]): correlation then transfers labels to the same relative position."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        ys = torch.linspace(-1, 1, h, device=images.device).view(h, 1).expand(h, w)
        xs = torch.linspace(-1, 1, w, device=images.device).view(1, w).expand(h, w)
        bands = [torch.sin(f * math.pi * c + p) for f in (0.5, 1, 2, 4) for c in (xs, ys) for p in (0, math.pi / 2)]
        return torch.stack(bands).unsqueeze(0).expand(b, -1, -1, -1)


def test_propagate_correlation_transfers_labels_at_any_size(device):
    ref_mask = np.zeros((16, 16), np.uint8)
    ref_mask[:, 8:] = 1
    ref_mask[12:, :] = 2
    ref_image = np.zeros((16, 16, 3), np.uint8)
    query = np.zeros((32, 32, 3), np.uint8)  # twice the reference size
    labels, confidence = propagate_correlation(query, [(ref_image, ref_mask)], _PositionMatcher(), 3,
                                               tau=0.01, k=8, device=device)
    assert labels.shape == (32, 32) and labels.dtype == np.uint8 and confidence.shape == (32, 32)
    expected = np.kron(ref_mask, np.ones((2, 2), np.uint8))
    # Away from the label borders the transfer is exact.
    interior = np.ones((32, 32), bool)
    interior[:, 14:18] = interior[22:26, :] = False
    assert (labels[interior] == expected[interior]).all()
    assert (confidence >= 0).all() and (confidence <= 1 + 1e-6).all()


def test_propagate_correlation_fuses_refs_and_skips_ignore(device):
    image = np.zeros((8, 8, 3), np.uint8)
    left_known = np.full((8, 8), 255, np.uint8)
    left_known[:, :4] = 1
    right_known = np.full((8, 8), 255, np.uint8)
    right_known[:, 4:] = 2
    labels, _ = propagate_correlation(image, [(image, left_known), (image, right_known)], _PositionMatcher(), 3,
                                      tau=0.01, k=4, device=device)
    # Each half comes from the reference that labels it; ignore pixels never vote.
    assert (labels[:, :3] == 1).all() and (labels[:, 5:] == 2).all()
    assert not (labels == 0).any()


# --- FeatureMatcher -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 2])
def test_feature_matcher_shapes_any_size(device, depth):
    torch.manual_seed(0)
    m = FeatureMatcher(in_channels=3, width=8, depth=depth, out_channels=12, projection=True).to(device)
    out = m(torch.randn(2, 3, 19, 26, device=device))
    assert out.shape == (2, 12, 19, 26)
    assert m.project(out.permute(0, 2, 3, 1).reshape(-1, 12)).shape == (2 * 19 * 26, 256)
    assert FeatureMatcher(width=8, depth=1, out_channels=12, projection=False).project(torch.ones(3, 12)).shape == (3, 12)


def test_feature_matcher_deterministic_for_seed(device):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(FeatureMatcher(width=8, depth=2, out_channels=8).to(device)(x))
    assert torch.equal(outs[0], outs[1])


def test_feature_matcher_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        FeatureMatcher(width=4, depth=1, out_channels=4)(torch.zeros(1, 1, 8, 8))


# --- marginal contrastive loss ---------------------------------------------------------------

def _unit(angle):
    return [math.cos(angle), math.sin(angle)]


def test_marginal_contrastive_loss_hand_computed(device):
    # Two pairs in 2-D: a_i at angle α_i, b_j at angle β_j, so cos θ_ij = cos(α_i − β_j).
    alpha, beta = [0.0, 1.5], [0.3, 1.0]
    a = torch.tensor([_unit(x) for x in alpha], device=device) * 2.0  # scale must not matter
    b = torch.tensor([_unit(x) for x in beta], device=device)
    m, tau = 0.25, 0.5
    expected = 0.0
    for i in range(2):
        logits = []
        for j in range(2):
            theta = abs(alpha[i] - beta[j])
            logits.append((math.cos(theta + m) if i == j else math.cos(theta)) / tau)
        expected += -logits[i] + math.log(sum(math.exp(z) for z in logits))
    expected /= 2
    loss = marginal_contrastive_loss(a, b, margin=m, tau=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # By hand: row 0 logits (cos 0.55, cos 1.0)/0.5 = (1.7050, 1.0806) → log(1 + e^-0.6244) = 0.4289;
    # row 1 logits (cos 1.2, cos 0.75)/0.5 = (0.7247, 1.4634) → log(1 + e^-0.7387) = 0.3905.
    assert loss.item() == pytest.approx((0.4289 + 0.3905) / 2, abs=2e-4)


def test_margin_zero_is_plain_infonce(device):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g).to(device), torch.randn(6, 5, generator=g).to(device)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / 0.1
    plain = F.cross_entropy(logits, torch.arange(6, device=device))
    assert marginal_contrastive_loss(a, b, margin=0.0, tau=0.1).item() == pytest.approx(plain.item(), rel=1e-5)


def test_margin_raises_loss_and_pulls_positives_harder(device):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, 8, generator=g).to(device)
    b = (a + 0.3 * torch.randn(16, 8, generator=g).to(device))
    losses, grads = [], []
    for margin in (0.0, 0.25, 0.5):
        a_ = a.clone().requires_grad_(True)
        loss = marginal_contrastive_loss(a_, b, margin=margin, tau=0.07)
        loss.backward()
        losses.append(loss.item())
        grads.append(a_.grad.norm().item())
    # A margin makes each positive look less similar: larger loss, larger gradient even though
    # the pairs are already the most similar ones in their rows.
    assert losses[0] < losses[1] < losses[2]
    assert grads[0] < grads[1]


def test_margin_loss_monotone_beyond_pi_minus_m(device):
    # A positive almost opposite its anchor: loss must still decrease as the pair gets closer.
    # The negatives stay orthogonal (third axis) so only the positive's angle changes.
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], device=device)
    values = []
    for angle in (3.1, 3.0, 2.9, 2.5, 1.0):
        a = torch.tensor([_unit(angle) + [0.0], [0.0, 0.0, 1.0]], device=device)
        values.append(marginal_contrastive_loss(a, b, margin=0.25).item())
    assert values == sorted(values, reverse=True)


def test_margin_loss_finite_gradient_for_identical_pair(device):
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device, requires_grad=True)
    marginal_contrastive_loss(a, a.detach().clone()).backward()
    assert torch.isfinite(a.grad).all()


# --- positive pairs -------------------------------------------------------------------------

def _grid(h, w, shift_x=0):
    xs = torch.linspace(-1, 1, w).view(1, w).expand(h, w)
    ys = torch.linspace(-1, 1, h).view(h, 1).expand(h, w)
    step = 2.0 / (w - 1)
    return torch.stack([xs + shift_x * step, ys])


def test_sample_positive_pairs_finds_equal_coordinates():
    h, w = 10, 12
    coords_a = _grid(h, w)
    coords_b = _grid(h, w, shift_x=-3)  # B's pixel (y, x) shows A's point (y, x - 3)
    valid_a = torch.ones(h, w, dtype=torch.bool)
    valid_a[:, w - 3:] = False  # these points would lie beyond B's right edge
    idx_a, idx_b = sample_positive_pairs(coords_a, valid_a, coords_b, None, 50,
                                         torch.Generator().manual_seed(0), max_dist=0.01)
    assert len(idx_a) == 50 and len(set(idx_b.tolist())) == 50
    ya, xa = idx_a // w, idx_a % w
    yb, xb = idx_b // w, idx_b % w
    assert (xa < w - 3).all()
    assert torch.equal(ya, yb) and torch.equal(xb, xa + 3)
    flat_a, flat_b = coords_a.reshape(2, -1), coords_b.reshape(2, -1)
    assert torch.allclose(flat_a[:, idx_a], flat_b[:, idx_b], atol=1e-5)


def test_sample_positive_pairs_drops_far_pairs_and_is_deterministic():
    coords_a = _grid(8, 8)
    coords_b = _grid(8, 8, shift_x=-3)
    valid_b = torch.zeros(8, 8, dtype=torch.bool)
    valid_b[:, :4] = True  # only B's left half: A's points at x < 3 have no counterpart there
    a1, b1 = sample_positive_pairs(coords_a, None, coords_b, valid_b, 64, torch.Generator().manual_seed(5), 0.05)
    a2, b2 = sample_positive_pairs(coords_a, None, coords_b, valid_b, 64, torch.Generator().manual_seed(5), 0.05)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    # B's valid columns 0..3 show A's columns -3..0: only A's column 0 (8 pixels) has a partner
    # within max_dist; every other point is at least one pixel step (2/7) away and is dropped.
    assert len(a1) == 8
    assert ((a1 % 8) == 0).all() and ((b1 % 8) == 3).all()


def test_margin_loss_extra_negatives_are_columns(device):
    g = torch.Generator().manual_seed(2)
    a, b, extra = (torch.randn(4, 3, generator=g).to(device) for _ in range(3))
    loss = marginal_contrastive_loss(a, b, margin=0.0, tau=0.2, negatives=extra)
    an = F.normalize(a, dim=1)
    logits = an @ torch.cat([F.normalize(b, dim=1), F.normalize(extra, dim=1)]).t() / 0.2
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(4, device=device)).item(), rel=1e-5)
