"""Training health (issue 14): the probe's numbers respond to what they measure.

Hand-built generators with known behaviour stand in for trained ones: an *ideal* one draws a
fixed pattern through its correspondence map (structure code = a known horizontal shift of the
map, texture code = a colour), a *texture-owns-layout* one ignores the map and shifts the pattern
by the texture code (the failure of issue 14), and a *constant* one ignores both codes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import load_recipe
from coordgan_cli.io.checkpoint import save_checkpoint
from coordgan_cli.losses import canonical_grid
from coordgan_cli.models import build_networks, generator_kwargs
from coordgan_cli.models.generator import Generator
from coordgan_cli.training.health import HEALTH_KEYS, estimate_shift, health_codes, measure_health, translate
from coordgan_cli.training.loop import GeneratorStage

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SIZE = 32


def _pattern(size: int = 64) -> torch.Tensor:
    """A fixed smooth random pattern (1, 1, size, size) with edges everywhere."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(1, 1, 8, 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


class ToyGenerator(nn.Module):
    """structure z[:, 0] → the canonical grid moved by that many map pixels; texture z → colour.

    ``mode``: "ideal" (image = pattern sampled at the map's coordinates × colour), "texture"
    (the map is ignored; the pattern moves by texture z[:, 0] pixels) or "constant" (both ignored).
    """

    latent_dim = 4

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.dummy = nn.Parameter(torch.zeros(1))
        self.pattern = _pattern()

    def map_structure(self, z):
        return z

    def map_texture(self, z):
        return z

    def texture_plus(self, w):
        return w[:, None]

    def correspondence(self, w):
        grid = canonical_grid(SIZE, SIZE).expand(w.shape[0], -1, -1, -1)
        if self.mode == "constant":
            return grid.clone()
        return torch.stack([translate(grid[i:i + 1], float(w[i, 0]))[0] for i in range(w.shape[0])])

    def synthesize(self, corr, w_plus, noise=None):
        b = corr.shape[0]
        if self.mode == "ideal":
            layout = F.grid_sample(self.pattern.expand(b, -1, -1, -1), corr.permute(0, 2, 3, 1), align_corners=True)
        elif self.mode == "texture":
            base = self.pattern.expand(b, -1, -1, -1)
            layout = torch.cat([translate(base[i:i + 1], 4 * float(w_plus[i, 0, 0])) for i in range(b)])
            layout = F.interpolate(layout, size=(SIZE, SIZE), mode="area")
        else:
            layout = F.interpolate(self.pattern, size=(SIZE, SIZE), mode="area").expand(b, -1, -1, -1)
        colour = 0.5 + 0.5 * torch.sigmoid(w_plus[:, 0, 1:4])  # positive gains: colour only
        return layout * colour[:, :, None, None] * 2 - 1


def _codes():
    z_s = torch.zeros(8, 4)
    z_s[::2, 0], z_s[1::2, 0] = 0.0, 3.0  # pairs differ by a 3-px shift of the map
    z_t = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    z_t[::2, 0], z_t[1::2, 0] = 0.0, 1.0
    return z_s, z_t


def test_ideal_generator_is_healthy():
    h = measure_health(ToyGenerator("ideal"), *_codes())
    assert set(h) == set(HEALTH_KEYS)
    # The known 3-px shift, in map pixels; the first three columns repeat the border (0, 1, 2 px).
    assert h["map_displacement_px"] == pytest.approx((29 * 3 + 0 + 1 + 2) / 32, abs=1e-3)
    assert h["layout_texture"] < 1e-3  # colour changes only
    assert h["layout_structure"] > 0.1 and h["layout_ratio"] > 100
    assert h["map_follow"] == pytest.approx(1.0, abs=0.15)


def test_texture_owning_the_layout_is_inverted_and_ignores_the_map():
    h = measure_health(ToyGenerator("texture"), *_codes())
    assert h["layout_structure"] < 1e-3 and h["layout_texture"] > 0.1
    assert h["layout_ratio"] < 0.01
    assert h["map_follow"] == pytest.approx(0.0, abs=0.1)


def test_constant_generator_gives_zero_changes():
    h = measure_health(ToyGenerator("constant"), *_codes())
    assert h["map_displacement_px"] == pytest.approx(0.0, abs=1e-6)
    assert h["layout_structure"] == pytest.approx(0.0, abs=1e-4)
    assert h["layout_texture"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="even"):
        measure_health(ToyGenerator("constant"), torch.zeros(3, 4), torch.zeros(3, 4))


def test_estimate_shift_finds_a_known_translation():
    image = F.interpolate(_pattern(), size=(SIZE, SIZE), mode="area").expand(2, 3, -1, -1)
    moved = translate(image, 2.5)
    torch.testing.assert_close(estimate_shift(image, moved, 6.0), torch.tensor([2.5, 2.5]))
    torch.testing.assert_close(estimate_shift(image, image, 6.0), torch.tensor([0.0, 0.0]))


def test_health_codes_are_fixed_and_leave_global_randomness_alone():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a = health_codes(16, seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = health_codes(16, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].shape == (8, 16)
    assert not torch.equal(a[0], health_codes(16, seed=3)[0])


def test_training_warns_once_after_warm_up_when_inverted():
    recipe = load_recipe(RECIPES / "tiny.toml")  # warmup_steps = 2
    stage = SimpleNamespace(state=SimpleNamespace(generator=ToyGenerator("texture"), step=1), facts={"seed": 0},
                            recipe=recipe, warned_inverted=False)
    values, warning = GeneratorStage.health(stage)
    assert values["layout_ratio"] < 1 and warning is None  # still warming up
    stage.state.step = 2
    _, warning = GeneratorStage.health(stage)
    assert warning.startswith("warning: layout ratio") and "structure code does not own the layout" in warning
    stage.state.step = 3
    assert GeneratorStage.health(stage)[1] is None  # once
    healthy = SimpleNamespace(state=SimpleNamespace(generator=ToyGenerator("ideal"), step=5), facts={"seed": 0},
                              recipe=recipe, warned_inverted=False)
    assert GeneratorStage.health(healthy)[1] is None


def test_info_health_on_a_checkpoint(tmp_path: Path):
    runner = CliRunner()
    recipe = load_recipe(RECIPES / "tiny.toml")
    torch.manual_seed(0)
    nets = build_networks(recipe.model)
    path = save_checkpoint(tmp_path / "latest.pt", {
        "kind": "generator", "step": 7, "config": recipe.to_json(),
        "networks": {k: nets[k].state_dict() for k in ("generator", "discriminator", "patch_discriminator")},
        "ema": {"generator": nets["generator"].state_dict()},
    })
    first = runner.invoke(app, ["--device", "cpu", "info", str(path), "--health", "--json"])
    assert first.exit_code == 0, first.output
    health = json.loads(first.stdout)["health"]
    assert set(HEALTH_KEYS) <= set(health) and health["weights"] == "ema" and health["codes"] == 8
    assert health["inverted"] == (health["layout_ratio"] < 1)
    again = json.loads(runner.invoke(app, ["--device", "cpu", "info", str(path), "--health", "--json"]).stdout)
    assert again["health"] == health  # fixed codes, constant noise: deterministic
    text = runner.invoke(app, ["--device", "cpu", "info", str(path), "--health"])
    assert text.exit_code == 0 and "training health" in text.stdout and "layout change" in text.stdout
    bad = runner.invoke(app, ["info", str(RECIPES / "tiny.toml"), "--health"])
    assert bad.exit_code == 2 and "checkpoint" in bad.stderr


def test_finer_fourier_encoding_lets_a_structure_swap_move_the_layout():
    # An untrained synthetic-64 generator: with the default frequencies (std pi/2) its images are
    # smooth, so maps of two structure codes ~3 px apart change the layout very little; four times
    # finer frequencies put edges where the map moves them (measured: 0.06 -> 0.5-0.6).
    recipe = load_recipe(RECIPES / "synthetic-64.toml")
    changes = {}
    for scale in (1.0, 4.0):
        model = dataclasses.replace(recipe.model, pe_scale=scale)
        torch.manual_seed(0)
        g = Generator(**generator_kwargs(model)).eval()
        z_s, z_t = health_codes(g.latent_dim, 0)
        changes[scale] = measure_health(g, z_s, z_t)["layout_structure"]
    assert changes[4.0] > 4 * changes[1.0]


class ShiftReader(nn.Module):
    """A toy encoder for ``ToyGenerator("ideal")``: reads the map's shift back from the image by
    matching it against the unshifted pattern (``estimate_shift``), plus a fixed ``error`` in pixels;
    ``constant=True`` ignores the image (structure code 0 for every image)."""

    def __init__(self, generator: ToyGenerator, error: float = 0.0, constant: bool = False) -> None:
        super().__init__()
        self.g, self.error, self.constant = generator, error, constant

    def encode_structure(self, images):
        w = torch.zeros(images.shape[0], 4)
        if not self.constant:
            base = self.g.synthesize(self.g.correspondence(w), self.g.texture_plus(torch.zeros_like(w)))
            # colour is a positive gain per image: compare the normalised layouts
            w[:, 0] = estimate_shift(_normalised(base).mean(1, keepdim=True).expand(len(images), -1, -1, -1),
                                     _normalised(images).mean(1, keepdim=True), 6.0) + self.error
        return w


def _normalised(images: torch.Tensor) -> torch.Tensor:
    return (images - images.mean((2, 3), keepdim=True)) / images.std((2, 3), keepdim=True)


def _encoder_codes():
    g = torch.Generator().manual_seed(4)
    z_s = torch.zeros(16, 4)
    z_s[:, 0] = torch.randint(0, 9, (16,), generator=g) * 0.5  # shifts 0 … 4 px in half-pixel steps
    return z_s, torch.randn(16, 4, generator=g)


def test_encoder_health_separates_an_exact_encoder_from_one_off_by_two_pixels_and_one_that_ignores_images():
    from coordgan_cli.training.health import ENCODER_HEALTH_KEYS, measure_encoder_health

    g = ToyGenerator("ideal")
    z_s, z_t = _encoder_codes()
    exact = measure_encoder_health(ShiftReader(g), g, z_s, z_t)
    assert set(exact) == set(ENCODER_HEALTH_KEYS)
    assert exact["encoder_map_error_px"] < 0.3 and exact["encoder_recovery"] > 0.8
    off = measure_encoder_health(ShiftReader(g, error=2.0), g, z_s, z_t)
    assert off["encoder_map_error_px"] == pytest.approx(exact["encoder_map_error_px"] + 2.0, abs=0.3)
    blind = measure_encoder_health(ShiftReader(g, constant=True), g, z_s, z_t)
    assert blind["encoder_recovery"] <= 0.0 + 1e-6
    # the baseline is the truth's own spread, the same whatever the encoder does
    assert exact["mean_map_error_px"] == off["mean_map_error_px"] == blind["mean_map_error_px"] > 0.5
    assert exact["encoder_recovery"] > off["encoder_recovery"] > blind["encoder_recovery"]


def test_info_health_on_an_encoder_checkpoint(tmp_path: Path):
    from tiny_checkpoints import make_encoder_checkpoint, make_generator_checkpoint

    generator = make_generator_checkpoint(tmp_path / "g.pt", seed=4)
    path = make_encoder_checkpoint(tmp_path / "e.pt", generator, seed=5)
    runner = CliRunner()
    res = runner.invoke(app, ["--device", "cpu", "info", str(path), "--health", "--json"])
    assert res.exit_code == 0, res.output
    enc = json.loads(res.stdout)["health"]["encoder"]
    assert enc["codes"] == 32 and enc["mean_map_error_px"] >= 0
    assert enc["encoder_recovery"] == pytest.approx(1 - enc["encoder_map_error_px"] / max(enc["mean_map_error_px"], 1e-6))
    text = runner.invoke(app, ["--device", "cpu", "info", str(path), "--health"])
    assert text.exit_code == 0 and "encoder health" in text.stdout and "recovery" in text.stdout
