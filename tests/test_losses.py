"""Losses against slow straightforward references (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from coordgan_cli import losses


def _maps(b: int, h: int, w: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grid = losses.canonical_grid(h, w).unsqueeze(0).expand(b, -1, -1, -1)
    return (grid + 0.05 * torch.randn(b, 2, h, w, generator=g)).clamp(-1, 1).to(device)


@pytest.mark.parametrize("distance", ["squared", "euclidean"])
@pytest.mark.parametrize("tau", [0.01, 0.002])
def test_soft_warp_matches_dense_value_and_gradient(distance, tau, device):
    # float64 so that the comparison is about the algorithm, not float32 summation order.
    f64 = dict(device=device, dtype=torch.float64)
    ca = _maps(2, 8, 10, "cpu", 1).to(**f64).requires_grad_()
    cb = _maps(2, 8, 10, "cpu", 2).to(**f64).requires_grad_()
    img = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(3)).to(**f64).requires_grad_()
    weights = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(4)).to(**f64)

    ours = losses.soft_warp(ca, cb, img, tau, distance=distance, chunk=16)
    ref = losses.soft_warp_dense(ca, cb, img, tau, distance=distance)
    assert ours.shape == (2, 3, 8, 10)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)

    g_ours = torch.autograd.grad((ours * weights).sum(), [ca, cb, img])
    g_ref = torch.autograd.grad((ref * weights).sum(), [ca, cb, img])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)

    # float32 (the training dtype) agrees in value too.
    ours32 = losses.soft_warp(ca.float(), cb.float(), img.float(), tau, distance=distance)
    torch.testing.assert_close(ours32, ref.float(), rtol=1e-4, atol=1e-5)


def test_soft_warp_different_sizes_and_identity(device):
    # Identical coordinates with a small tau rebuild the image itself.
    c = losses.canonical_grid(6, 6).unsqueeze(0).to(device)
    img = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0)).to(device)
    out = losses.soft_warp(c, c, img, 1e-4)
    torch.testing.assert_close(out, img, rtol=1e-3, atol=1e-3)
    # A may have another size than B.
    ca = losses.canonical_grid(4, 5).unsqueeze(0).to(device)
    assert losses.soft_warp(ca, c, img, 0.01).shape == (1, 3, 4, 5)
    with pytest.raises(ValueError, match="unknown warp distance"):
        losses.soft_warp(c, c, img, 0.01, distance="manhattan")


def test_warp_loss_symmetric_matches_dense(device):
    ca = _maps(2, 6, 6, device, 5)
    cb = _maps(2, 6, 6, device, 6)
    ia = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(7)).to(device)
    ib = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(8)).to(device)

    def l1(x, y):
        return (x - y).abs().flatten(1).mean(1)

    ours = losses.warp_loss(ia, ib, ca, cb, l1, 0.01)
    ref = losses.warp_loss(ia, ib, ca, cb, l1, 0.01, dense=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    one_way = losses.warp_loss(ia, ib, ca, cb, l1, 0.01, symmetric=False)
    assert one_way < ours


def _chamfer_brute(warped: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    total = 0.0
    pts = grid.flatten(1).t()
    for sample in warped:
        p = sample.flatten(1).t()
        d = ((p[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
        total = total + d.min(1).values.mean() + d.min(0).values.mean()
    return total / warped.shape[0]


def test_chamfer_matches_brute_force_value_and_gradient(device):
    grid = losses.canonical_grid(7, 9).to(device)
    warped = (_maps(3, 7, 9, device, 9) * 0.7).requires_grad_()
    ours = losses.chamfer_loss(warped, grid, chunk=5)
    ref = _chamfer_brute(warped, grid)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(losses.chamfer_loss_dense(warped, grid), ref)
    (g1,) = torch.autograd.grad(ours, warped)
    (g2,) = torch.autograd.grad(_chamfer_brute(warped, grid), warped)
    torch.testing.assert_close(g1, g2)
    # The canonical grid itself has zero chamfer distance.
    assert losses.chamfer_loss(grid.unsqueeze(0), grid).item() == 0.0


def test_r1_value_on_known_function(device):
    # D(x) = Σ x² per sample → ∂D/∂x = 2x, R1 = mean_b Σ 4x².
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    pred = x.pow(2).flatten(1).sum(1)
    r1 = losses.d_r1_loss(pred, x)
    torch.testing.assert_close(r1, (4 * x.detach().pow(2)).flatten(1).sum(1).mean())
    # Differentiable (create_graph): d R1 / dx = 8x / B.
    (g,) = torch.autograd.grad(r1, x)
    torch.testing.assert_close(g, 8 * x.detach() / 4)


def test_adversarial_losses_values(device):
    real = torch.tensor([0.0, 2.0], device=device)
    fake = torch.tensor([-1.0, 1.0], device=device)
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(losses.d_logistic_loss(real, fake), sp(-real).mean() + sp(fake).mean())
    torch.testing.assert_close(losses.g_nonsaturating_loss(fake), sp(-fake).mean())
    torch.testing.assert_close(losses.structure_swap_d_loss(real, fake), losses.d_logistic_loss(real, fake))
    torch.testing.assert_close(losses.structure_swap_g_loss(fake), losses.g_nonsaturating_loss(fake))
    grid = losses.canonical_grid(4, 4).to(device)
    assert losses.backward_mlp_loss(grid.unsqueeze(0) + 0.5, grid).item() == pytest.approx(0.5)


def test_texture_swap_loss_uses_per_sample_distance(device):
    a = torch.zeros(2, 3, 4, 4, device=device)
    b = torch.ones(2, 3, 4, 4, device=device)
    loss = losses.texture_swap_loss(a, b, lambda x, y: (x - y).abs().flatten(1).mean(1))
    assert loss.item() == pytest.approx(1.0)


def test_random_crops_shapes_determinism_and_content(device):
    img = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32).to(device)
    c1 = losses.random_crops(img, 8, 0.125, 0.25, 8, torch.Generator().manual_seed(1))
    c2 = losses.random_crops(img, 8, 0.125, 0.25, 8, torch.Generator().manual_seed(1))
    c3 = losses.random_crops(img, 8, 0.125, 0.25, 8, torch.Generator().manual_seed(2))
    assert c1.shape == (2, 8, 3, 8, 8)
    assert torch.equal(c1, c2)
    assert not torch.equal(c1, c3)
    # Full-size crop at out_size = image size is the image itself.
    full = losses.random_crops(img, 1, 1.0, 1.0, 32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(full[:, 0], img)
    # Crops stay inside the image's value range and come from the right image.
    assert c1[0].max() <= img[0].max() and c1[1].min() >= img[1].min()
    # Gradients reach the images.
    x = img.clone().requires_grad_()
    losses.random_crops(x, 2, 0.2, 0.3, 4, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_warp_temperature_matches_the_papers_reach():
    # 0.635 px on the paper's 128 px map is its τ = 0.01 with the Euclidean kernel; the squared
    # kernel needs τ = reach² for the same reach.
    assert losses.warp_temperature(0.635, 128, "euclidean") == pytest.approx(0.01)
    assert losses.warp_temperature(0.635, 128, "squared") == pytest.approx(1e-4)
    assert losses.warp_temperature(1.0, 32, "squared") == pytest.approx((2 / 31) ** 2)
    with pytest.raises(ValueError, match="reach"):
        losses.warp_temperature(0.0, 32)
    # The weight of a match one reach away has fallen by e, for both kernels.
    for distance in ("squared", "euclidean"):
        tau = losses.warp_temperature(0.635, 128, distance)
        r = 0.635 * 2 / 127
        d = r * r if distance == "squared" else r
        assert math.exp(-d / tau) == pytest.approx(math.exp(-1))


@pytest.mark.parametrize("distance", ["squared", "euclidean"])
def test_warp_loss_at_a_derived_temperature_matches_dense(distance, device):
    # The sharp temperatures the recipes now use stay exact against the HW × HW reference.
    tau = losses.warp_temperature(0.635, 12, distance)
    ca, cb = _maps(2, 12, 12, device, 11), _maps(2, 12, 12, device, 12)
    ia = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(13)).to(device)
    ib = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(14)).to(device)

    def l1(x, y):
        return (x - y).abs().flatten(1).mean(1)

    ours = losses.warp_loss(ia, ib, ca, cb, l1, tau, distance=distance)
    ref = losses.warp_loss(ia, ib, ca, cb, l1, tau, distance=distance, dense=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_warp_loss_detaches_its_target_by_default(device):
    ca, cb = _maps(1, 6, 6, device, 1), _maps(1, 6, 6, device, 2)
    ia = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3)).to(device).requires_grad_()
    ib = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(4)).to(device).requires_grad_()

    def l1(x, y):
        return (x - y).abs().flatten(1).mean(1)

    # One direction: A rebuilt from B. The target A gets no gradient; B's colours do.
    ga, gb = torch.autograd.grad(losses.warp_loss(ia, ib, ca, cb, l1, 0.01, symmetric=False), [ia, ib],
                                 allow_unused=True)
    assert (ga is None or ga.abs().sum() == 0) and gb.abs().sum() > 0
    ga, _ = torch.autograd.grad(losses.warp_loss(ia, ib, ca, cb, l1, 0.01, symmetric=False, detach_target=False),
                                [ia, ib])
    assert ga.abs().sum() > 0
