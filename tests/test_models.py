"""Model core: tiny networks forward/backward, paper-size parameter counts, warp MLP on any grid,
deterministic noise, modulated conv against a straightforward per-sample reference."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from coordgan_cli.config import ModelConfig, load_recipe
from coordgan_cli.models import (
    CoordinateWarp,
    Encoder,
    Generator,
    build_networks,
    count_parameters,
    canonical_grid,
    canonical_grid_map,
    generator_kwargs,
    parameter_counts,
)
from coordgan_cli.models.layers import ModulatedConv2d, Upsample, make_kernel, blur

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return load_recipe(RECIPES / "tiny.toml").model


def test_tiny_networks_forward_backward(tiny: ModelConfig, device: torch.device) -> None:
    torch.manual_seed(0)
    with device:
        nets = build_networks(tiny)
    g, d, pd, enc = nets["generator"], nets["discriminator"], nets["patch_discriminator"], nets["encoder"]
    b, dim = 4, tiny.latent_dim
    z_s, z_t = torch.randn(b, dim, device=device), torch.randn(b, dim, device=device)
    image, corr = g(z_s, z_t)
    assert image.shape == (b, 3, tiny.size, tiny.size)
    assert corr.shape == (b, 2, tiny.coord_size, tiny.coord_size)
    assert corr.abs().max() <= 1.0
    logits = d(image)
    assert logits.shape == (b, 1)
    w_s, w_plus = enc(image)
    assert w_s.shape == (b, dim) and w_plus.shape == (b, g.n_latent, dim)
    crops = image[:, :, : tiny.patch_size, : tiny.patch_size]
    refs = torch.stack([crops, crops.flip(-1)], dim=1)  # (B, 2, 3, p, p)
    feats = pd.extract_features(refs)
    assert feats.shape[:2] == (b, 2)
    pair_logits = pd.discriminate_features(feats.mean(1), pd.extract_features(crops))
    assert pair_logits.shape == (b, 1)
    loss = logits.mean() + w_s.square().mean() + w_plus.square().mean() + pair_logits.mean()
    loss.backward()
    for name, net in nets.items():
        grads = [p.grad for p in net.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), name
    # Every generator part takes part in the image: mapping, warp, synthesis all receive gradients.
    for part in (g.mapping_structure, g.mapping_texture, g.warp, g.synthesis):
        assert any(p.grad.abs().sum() > 0 for p in part.parameters())


def test_generator_methods_compose(tiny: ModelConfig) -> None:
    torch.manual_seed(1)
    g = Generator(**generator_kwargs(tiny))
    z_s, z_t = torch.randn(3, tiny.latent_dim), torch.randn(3, tiny.latent_dim)
    w_s, w_t = g.map_structure(z_s), g.map_texture(z_t)
    w_plus = g.texture_plus(w_t)
    assert w_plus.shape == (3, g.n_latent, tiny.latent_dim)
    assert torch.equal(w_plus[:, 0], w_plus[:, -1])
    corr = g.correspondence(w_s)
    image = g.synthesize(corr, w_plus, noise="const")
    image2, corr2 = g(z_s, z_t, noise="const")
    assert torch.allclose(image, image2) and torch.allclose(corr, corr2)
    assert g.correspondence(w_s, size=(20, 12)).shape == (3, 2, 20, 12)


def test_highres_blocks_upsample(tiny: ModelConfig) -> None:
    cfg = dataclasses.replace(tiny, size=tiny.coord_size * 4, highres_channels=[8, 8])
    g = Generator(**generator_kwargs(cfg))
    assert g.n_latent == 1 + tiny.synthesis_layers + 2 * 2 + 1
    image, corr = g(torch.randn(2, cfg.latent_dim), torch.randn(2, cfg.latent_dim), noise="none")
    assert image.shape == (2, 3, cfg.size, cfg.size)
    assert corr.shape == (2, 2, cfg.coord_size, cfg.coord_size)
    nets = build_networks(cfg)
    assert nets["encoder"].n_latent == g.n_latent
    assert nets["discriminator"](image).shape == (2, 1)


def test_same_seed_const_noise_gives_identical_images(tiny: ModelConfig) -> None:
    cfg = dataclasses.replace(tiny, noise="const")
    images = []
    for _ in range(2):
        torch.manual_seed(123)
        g = Generator(**generator_kwargs(cfg))
        gen = torch.Generator().manual_seed(7)
        z_s = torch.randn(2, cfg.latent_dim, generator=gen)
        z_t = torch.randn(2, cfg.latent_dim, generator=gen)
        with torch.no_grad():
            images.append(g(z_s, z_t)[0])
    assert torch.equal(images[0], images[1])
    # The constant noise is part of the weights: a state-dict copy reproduces the image exactly.
    g2 = Generator(**generator_kwargs(cfg))
    g2.load_state_dict(g.state_dict())
    with torch.no_grad():
        assert torch.equal(g2(z_s, z_t)[0], images[0])
        # Random noise differs between calls (and the noise layers do act once trained).
        for layer in g.synthesis.convs:
            layer.noise.weight.data.fill_(0.5)
        a, b = g(z_s, z_t, noise="random")[0], g(z_s, z_t, noise="random")[0]
        assert not torch.equal(a, b)
        assert torch.equal(g(z_s, z_t, noise="none")[0], g(z_s, z_t, noise="none")[0])


# DESIGN §2 paper figures (millions), ±3 %.
PAPER = {"generator": 35.3, "synthesis": 30.5, "mapping_structure": 2.1, "mapping_texture": 2.1, "warp": 0.53,
         "discriminator": 28.4, "patch_discriminator": 4.5, "encoder": 41.0}


def test_parameter_counts_match_paper() -> None:
    counts = parameter_counts(ModelConfig())
    for name, millions in PAPER.items():
        assert abs(counts[name] / 1e6 - millions) <= 0.03 * millions, (name, counts[name])
    parts = counts["mapping_structure"] + counts["mapping_texture"] + counts["warp"] + counts["synthesis"]
    assert counts["generator"] == parts
    assert "backward" not in counts
    with_b = parameter_counts(dataclasses.replace(ModelConfig(), backward_mlp=True))
    assert with_b["backward"] == counts["warp"] and with_b["generator"] == parts + counts["warp"]


def test_parameter_counts_equal_real_modules(tiny: ModelConfig) -> None:
    nets = build_networks(tiny)
    counts = parameter_counts(tiny)
    for name, net in nets.items():
        assert counts[name] == sum(p.numel() for p in net.parameters())


def test_canonical_grid_orientation() -> None:
    grid = canonical_grid(3, 4)
    assert grid.shape == (12, 2)
    assert grid[0].tolist() == [-1.0, -1.0]  # top-left
    assert grid[3].tolist() == [1.0, -1.0]  # top-right: x runs across columns
    assert grid[-1].tolist() == [1.0, 1.0]  # bottom-right: y runs down rows
    m = canonical_grid_map(3, 4)
    assert m.shape == (1, 2, 3, 4)
    assert torch.equal(m[0, 0, 0], torch.linspace(-1, 1, 4)) and torch.equal(m[0, 1, :, 0], torch.linspace(-1, 1, 3))


def test_warp_mlp_on_a_finer_grid_matches_bilinear_upsampling() -> None:
    torch.manual_seed(0)
    warp = CoordinateWarp(latent_dim=16, hidden=64, n_layers=3)
    with torch.no_grad():
        # A smooth warp: small weights keep the piecewise-linear MLP gentle (few kinks per cell).
        for p in warp.parameters():
            p.mul_(0.5)
        w = torch.randn(2, 16)
        coarse = warp(w, 128)
        fine = warp(w, 512)
    assert fine.shape == (2, 2, 512, 512)
    upsampled = F.interpolate(coarse, size=(512, 512), mode="bilinear", align_corners=True)
    err = (fine - upsampled).abs()
    assert err.max() < 2e-3 and err.mean() < 1e-4
    # Grid positions shared by both grids (every 511/127-th …) agree exactly at the corners.
    assert torch.allclose(fine[..., 0, 0], coarse[..., 0, 0]) and torch.allclose(fine[..., -1, -1], coarse[..., -1, -1])


def test_warp_chunking_does_not_change_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import coordgan_cli.models.warp as warp_mod

    torch.manual_seed(0)
    warp = CoordinateWarp(latent_dim=8, hidden=16, n_layers=3)
    w = torch.randn(2, 8)
    whole = warp(w, 40)
    monkeypatch.setattr(warp_mod, "_CHUNK_ELEMENTS", 16)  # forces 1024-point chunks
    assert torch.allclose(warp(w, 40), whole, atol=1e-6)


@pytest.mark.parametrize("skip", [False, True])
def test_warp_inference_path_equals_autograd_path(monkeypatch: pytest.MonkeyPatch, skip: bool) -> None:
    """Without autograd the MLP runs block by block with fused addmm / in-place ReLU; values must
    equal the autograd path's (which training uses), for shared and per-sample points, and the
    autograd path must still give gradients."""
    import coordgan_cli.models.warp as warp_mod

    torch.manual_seed(0)
    warp = CoordinateWarp(latent_dim=8, hidden=32, n_layers=4, skip=skip)
    w = torch.randn(3, 8)
    with_grad = warp(w, (24, 40))
    assert with_grad.requires_grad
    with_grad.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in warp.parameters())
    monkeypatch.setattr(warp_mod, "_BLOCK_ELEMENTS", 1)  # 256-point blocks (1 thread): several per grid
    monkeypatch.setattr(warp_mod, "_CHUNK_ELEMENTS", 1)  # 1024-point blocks otherwise
    with torch.no_grad():
        fast = warp(w, (24, 40))
        pts = torch.rand(3, 700, 2) * 2 - 1
        per_sample = warp.warp_points(w, pts)
    with torch.inference_mode():
        assert torch.allclose(warp(w, (24, 40)), fast)
    assert torch.allclose(fast, with_grad.detach(), atol=1e-6)
    expected = torch.stack([warp.mlp._run(pts[i][None], (w[i] @ warp.mlp.first.weight[:, 2:].t()
                                                            + warp.mlp.first.bias)[None, None])[0]
                            for i in range(3)]).detach()
    assert torch.allclose(per_sample, expected, atol=1e-6)


def _reference_modulated_conv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Straightforward StyleGAN2 definition: one modulated (and demodulated) weight per sample."""
    outs = []
    s = conv.modulation(style)
    for i in range(x.shape[0]):
        weight = conv.weight * conv.scale * s[i][None, :, None, None]
        if conv.demodulate:
            weight = weight / torch.sqrt(weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xi = x[i : i + 1]
        if conv.upsample:
            out = F.conv_transpose2d(xi, weight.transpose(0, 1), stride=2)
            k = make_kernel([1, 3, 3, 1]) * 4
            out = blur(out, k, (1, 1))
        else:
            out = F.conv2d(xi, weight, padding=conv.kernel_size // 2)
        outs.append(out)
    return torch.cat(outs)


@pytest.mark.parametrize("upsample,demodulate,k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_matches_per_sample_reference(upsample: bool, demodulate: bool, k: int, device: torch.device) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(5, 7, k, style_dim=6, demodulate=demodulate, upsample=upsample).to(device)
    with torch.no_grad():
        conv.modulation.weight.mul_(3)  # styles far from 1 so modulation matters
    x = torch.randn(3, 5, 8, 8, device=device)
    style = torch.randn(3, 6, device=device)
    out = conv(x, style)
    ref = _reference_modulated_conv(conv, x, style)
    assert out.shape == ref.shape == (3, 7, 16 if upsample else 8, 16 if upsample else 8)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_upsample_keeps_constants_and_doubles_size() -> None:
    x = torch.full((1, 2, 6, 6), 3.0)
    y = Upsample()(x)
    assert y.shape == (1, 2, 12, 12)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))


def test_encoder_resizes_other_image_sizes(tiny: ModelConfig) -> None:
    enc = build_networks(tiny)["encoder"]
    w_s, w_plus = enc(torch.randn(2, 3, tiny.size * 2, tiny.size * 2))
    assert w_s.shape == (2, tiny.latent_dim)
    assert torch.allclose(enc.encode_structure(torch.zeros(1, 3, tiny.size, tiny.size)),
                          enc(torch.zeros(1, 3, tiny.size, tiny.size))[0])


def test_backward_mlp(tiny: ModelConfig) -> None:
    g = Generator(**{**generator_kwargs(tiny), "backward_mlp": True})
    w_s = g.map_structure(torch.randn(2, tiny.latent_dim))
    corr = g.correspondence(w_s)
    assert g.canonical_estimate(corr, w_s).shape == corr.shape
    with pytest.raises(RuntimeError):
        Generator(**generator_kwargs(tiny)).canonical_estimate(corr, w_s)


def test_minibatch_stddev_odd_batch(tiny: ModelConfig) -> None:
    d = build_networks(tiny)["discriminator"]
    assert d(torch.randn(3, 3, tiny.size, tiny.size)).shape == (3, 1)
    assert math.isfinite(d(torch.randn(1, 3, tiny.size, tiny.size)).item())


def test_warp_skip_starts_near_identity_and_plain_mlp_does_not() -> None:
    """Issue 14: a plain warp MLP of a random code draws nearly one point per image; with the skip
    (recipes' default) the untrained map is close to the canonical grid, still differs between
    structure codes, and the skip adds no parameters."""
    grid = canonical_grid_map(32, 32)
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    maps = {}
    for skip in (False, True):
        torch.manual_seed(0)
        warp = CoordinateWarp(latent_dim=64, hidden=64, n_layers=3, skip=skip)
        with torch.no_grad():
            maps[skip] = warp(z, 32)
    plain, skipped = maps[False], maps[True]
    assert plain.flatten(2).std(2).mean() < 0.05  # collapsed: the whole map is about one point
    assert (plain - grid).abs().mean() > 0.3
    assert (skipped - grid).abs().mean() < 0.15
    assert skipped.flatten(2).std(2).mean() > 0.45  # spans the square like the grid (std 0.59)
    between_codes_px = (skipped - skipped.mean(0)).norm(dim=1).mean() * 31 / 2
    assert between_codes_px > 0.2
    assert count_parameters(CoordinateWarp(64, 64, 3, skip=True)) == count_parameters(CoordinateWarp(64, 64, 3))


def test_warp_code_gain_field_spreads_the_untrained_maps_of_different_codes(tiny: ModelConfig) -> None:
    """``model.warp_code_gain`` scales the structure code's first-layer weights of the warp MLP at
    initialisation only: 1 leaves the old initialisation bit for bit; larger gains start the maps
    of different structure codes further apart (roughly in proportion), still near the grid."""
    z = torch.randn(6, tiny.latent_dim, generator=torch.Generator().manual_seed(3))

    def untrained(gain: float) -> tuple[Generator, float]:
        torch.manual_seed(0)
        g = Generator(**generator_kwargs(dataclasses.replace(tiny, warp_skip=True, warp_code_gain=gain)))
        with torch.no_grad():
            maps = g.correspondence(g.map_structure(z))
        return g, float((maps - maps.mean(0)).norm(dim=1).mean() * (maps.shape[-1] - 1) / 2)

    torch.manual_seed(0)
    before = Generator(**generator_kwargs(dataclasses.replace(tiny, warp_skip=True)))
    g1, px1 = untrained(1.0)
    assert torch.equal(g1.warp.mlp.first.weight, before.warp.mlp.first.weight)
    g3, px3 = untrained(3.0)
    assert torch.equal(g3.warp.mlp.first.weight[:, 2:], 3.0 * g1.warp.mlp.first.weight[:, 2:])
    assert torch.equal(g3.warp.mlp.first.weight[:, :2], g1.warp.mlp.first.weight[:, :2])
    assert 2.0 < px3 / px1 < 4.0
    _, px0 = untrained(0.0)
    assert px0 < 1e-5  # no code input at all: every code draws the same map
    s64 = load_recipe(RECIPES / "synthetic-64.toml").model
    assert s64.warp_affine and s64.warp_residual > 0  # the shipped recipe spreads its maps with the pose head


def test_warp_affine_head_moves_the_whole_grid_before_the_mlp(tiny: ModelConfig) -> None:
    """``model.warp_affine``: the warp MLP sees each canonical point moved by the code's pose
    M·p + t. The pose is checked against the written-out rotation / scale / shear for set head
    outputs, the warp against the same MLP evaluated at hand-moved points; the parameters stay
    inside their bounds however large the head's output; the head starts with a spread of about
    ``warp_affine_init`` across codes (untrained maps of different codes apart, more with a larger
    spread); without the field there is no head, so older checkpoints still load."""
    from coordgan_cli.models.warp import AFFINE_BOUNDS, AFFINE_LR_MUL

    z = torch.randn(64, tiny.latent_dim, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    g = Generator(**generator_kwargs(dataclasses.replace(tiny, warp_skip=True, warp_affine=True,
                                                         warp_affine_init=0.1)))
    assert "warp.affine.weight" in g.state_dict()
    w = g.map_structure(z).detach()
    with torch.no_grad():
        m, t = g.warp.pose(w)
    spread = torch.cat([m.reshape(-1, 4), t], 1).std(0)
    assert bool(((spread > 0.03) & (spread < 0.3)).all()), spread

    bounds = torch.tensor(AFFINE_BOUNDS)

    def set_pose(values: list[float]) -> None:  # head output that gives these (θ, s, a, h, tx, ty)
        with torch.no_grad():
            g.warp.affine.weight.zero_()
            g.warp.affine.bias.copy_(torch.atanh(torch.tensor(values) / bounds) * bounds / AFFINE_LR_MUL)

    grid = canonical_grid(9, 9)
    theta, scale, shear = 0.2, math.log(1.1), 0.1
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    for values, m_true, t_true in [
        ([0, 0, 0, 0, 0.25, -0.1], torch.eye(2), torch.tensor([0.25, -0.1])),
        ([theta, 0, 0, 0, 0, 0], rot, torch.zeros(2)),
        ([0, scale, 0, shear, 0, 0], 1.1 * torch.tensor([[1.0, shear], [0.0, 1.0]]), torch.zeros(2)),
    ]:
        set_pose(values)
        with torch.no_grad():
            m, t = g.warp.pose(w[:2])
            torch.testing.assert_close(m, m_true.expand(2, 2, 2))
            torch.testing.assert_close(t, t_true.expand(2, 2))
            ours = g.warp.warp_points(w[:2], grid)
            expected = g.warp.mlp(grid @ m_true.t() + t_true, w[:2])
            plain = g.warp.mlp(grid, w[:2])
            full = g.correspondence(w[:2], 9)
        torch.testing.assert_close(ours, expected)
        assert (ours - plain).abs().max() > 0.05  # the head really moved the map
        torch.testing.assert_close(full, ours.transpose(1, 2).reshape(2, 2, 9, 9))
    with torch.no_grad():  # a runaway head stays inside the bounds: no folded or vanishing grid
        g.warp.affine.bias.fill_(1e4)
        m, t = g.warp.pose(w[:2])
    assert float(t.max()) <= AFFINE_BOUNDS[4] + 1e-6
    assert 0.2 < float(torch.linalg.det(m).min()) < 5.0

    def maps_apart(init: float) -> float:
        torch.manual_seed(0)
        gen = Generator(**generator_kwargs(dataclasses.replace(tiny, warp_skip=True, warp_code_gain=0.0,
                                                               warp_affine=True, warp_affine_init=init)))
        with torch.no_grad():
            maps = gen.correspondence(gen.map_structure(z[:8]))
        return float((maps - maps.mean(0)).norm(dim=1).mean())

    assert maps_apart(0.0) < 1e-5 < maps_apart(0.05) < maps_apart(0.2)
    plain_g = Generator(**generator_kwargs(dataclasses.replace(tiny, warp_skip=True)))
    assert not any(k.startswith("warp.affine") for k in plain_g.state_dict())


def test_warp_residual_bounds_what_the_mlp_adds(tiny: ModelConfig) -> None:
    """``model.warp_residual``: the warp MLP's offset from the (moved) grid point is at most ±bound
    before the final tanh, however far its weights run, so the map stays a bent copy of the grid;
    the no-autograd inference path agrees with the training path; 0 leaves the MLP unbounded."""
    from coordgan_cli.models.warp import SKIP_SCALE

    z = torch.randn(4, tiny.latent_dim, generator=torch.Generator().manual_seed(5))
    grid = canonical_grid(17, 17)
    for bound in (0.0, 0.2):
        torch.manual_seed(0)
        g = Generator(**generator_kwargs(dataclasses.replace(tiny, warp_skip=True, warp_residual=bound)))
        with torch.no_grad():
            g.warp.mlp.last.weight.mul_(50.0)  # a runaway MLP
            g.warp.mlp.last.bias.fill_(3.0)
        w = g.map_structure(z).detach()
        with torch.no_grad():
            inference = g.warp.warp_points(w, grid)
        with torch.enable_grad():
            w_grad = w.clone().requires_grad_(True)
            training = g.warp.warp_points(w_grad, grid)
        torch.testing.assert_close(inference, training.detach(), atol=1e-5, rtol=1e-5)
        offset = torch.atanh(inference.clamp(-0.999999, 0.999999)) - torch.atanh(SKIP_SCALE * grid)
        if bound:
            assert float(offset.abs().max()) <= bound + 1e-4
            assert float(offset.abs().max()) > 0.9 * bound  # the bound is reached, not just respected
        else:
            assert float(offset.abs().max()) > 2.0


def test_encoder_size_field_sets_the_encoder_input(tiny: ModelConfig) -> None:
    from coordgan_cli.models import encoder_kwargs

    assert encoder_kwargs(tiny)["size"] == tiny.coord_size  # 0: the map size, as before the field existed
    big = dataclasses.replace(tiny, encoder_size=2 * tiny.coord_size)
    assert Encoder(**encoder_kwargs(big)).size == 2 * tiny.coord_size
