"""coordgan train-encoder: a few steps, exact resume, the generator stays frozen and paired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.inference import load_correspondence_model
from coordgan_cli.io.checkpoint import file_sha256, load_checkpoint
from coordgan_cli.io.images import read_image
from coordgan_cli.perceptual import build_perceptual
from coordgan_cli.training.encoder_step import latent_consistency_loss, reconstruction_loss

from tiny_checkpoints import TINY, make_generator_checkpoint, make_images

runner = CliRunner()
FAST = ["--set", "optim.batch=2", "--set", "optim.lr=0.001"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train_encoder")
    gen = make_generator_checkpoint(d / "gen.pt")
    make_images(d / "imgs", 6, sub_every=0)
    return {"gen": gen, "imgs": d / "imgs", "dir": d}


def _train(setup, out: Path, *extra: str, gen: Path | None = None):
    return runner.invoke(app, ["--quiet", "--device", "cpu", "train-encoder", str(gen or setup["gen"]), str(TINY),
                               "--out", str(out), "--data", str(setup["imgs"]), *FAST, *extra])


def test_train_resume_is_exact_and_generator_frozen(setup, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    res = _train(setup, whole, "--max-steps", "3")
    assert res.exit_code == 0, res.output
    assert _train(setup, split, "--max-steps", "2").exit_code == 0
    res = _train(setup, split, "--max-steps", "3")
    assert res.exit_code == 0, res.output
    a, b = load_checkpoint(whole / "latest.pt"), load_checkpoint(split / "latest.pt")
    assert a["step"] == b["step"] == 3 and a["kind"] == "encoder"
    for k, v in a["networks"]["encoder"].items():
        assert torch.equal(v, b["networks"]["encoder"][k]), k
    # The embedded generator is the GAN checkpoint's EMA generator, untouched; its hash is recorded.
    g = load_checkpoint(setup["gen"])["ema"]["generator"]
    assert all(torch.equal(g[k], a["networks"]["generator"][k]) for k in g)
    assert a["extra"]["generator_sha256"] == file_sha256(setup["gen"])
    # Training changed the encoder and the run directory is complete.
    lines = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all(np.isfinite(r["rec_l1"]) for r in lines)
    assert [r["step"] for r in (json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    grid = read_image(whole / "samples" / "step-0000003.png")
    assert grid.shape == (4 * 32, 3 * 32, 3)  # rows: input | reconstruction | correspondence map
    model = load_correspondence_model(whole / "latest.pt", "cpu")
    assert model.generator_sha256 == file_sha256(setup["gen"])
    assert model.correspondence_maps([read_image(next(setup["imgs"].iterdir()))])[0].shape == (2, 32, 32)


def test_other_generator_is_refused_on_resume(setup, tmp_path):
    run = tmp_path / "run"
    assert _train(setup, run, "--max-steps", "1").exit_code == 0
    other = make_generator_checkpoint(tmp_path / "other.pt", seed=9)
    res = _train(setup, run, "--max-steps", "2", gen=other)
    assert res.exit_code == 2 and "sha256" in res.stderr and "other.pt" in res.stderr
    res = runner.invoke(app, ["train-encoder", str(run / "latest.pt"), str(TINY), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "generator checkpoint" in res.stderr


def test_dry_run_takes_the_model_from_the_checkpoint(setup):
    res = runner.invoke(app, ["train-encoder", str(setup["gen"]), str(TINY), "--out", "unused", "--dry-run",
                              "--set", "model.synthesis_channels=64"])
    assert res.exit_code == 0, res.output
    assert "synthesis_channels = 16" in res.stdout


def test_pure_losses():
    perceptual = build_perceptual("random-tiny")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    l1, perc = reconstruction_loss(x, x, perceptual)
    assert l1.item() == 0 and perc.abs().item() < 1e-6
    l1, _ = reconstruction_loss(x + 0.5, x, perceptual)
    assert abs(l1.item() - 0.5) < 1e-6
    w = torch.zeros(2, 4)
    c = torch.zeros(2, 2, 3, 3)
    code, cmap = latent_consistency_loss(w + 1, w, c - 0.25, c)
    assert code.item() == 1.0 and cmap.item() == 0.25


def test_equivariance_loss_separates_a_map_that_follows_the_warp_from_one_that_does_not():
    """``encoder.equivariance``: a warped image's map must be the original's map resampled at T(p).
    With the canonical grid as the original's map, the map that follows the warp costs ~0, one
    2 px off (32 px map) clearly more, and so does the unmoved map (an encoder that ignores the
    warp); ``warp_by`` moves pixels exactly as the loss assumes (a 2 px shift by hand)."""
    from coordgan_cli.models import canonical_grid_map
    from coordgan_cli.training.encoder_step import equivariance_loss, random_affine, warp_by

    size = 32
    grid = canonical_grid_map(size, size).expand(3, -1, -1, -1)
    affine = random_affine(3, 15.0, 0.15, 0.1, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert affine.shape == (3, 2, 3)
    follows = warp_by(grid, affine)  # the true map of the warped image
    px = 2 / (size - 1)
    right = equivariance_loss(follows, grid, affine).item()
    off = equivariance_loss(follows + torch.tensor([2 * px, 0.0])[None, :, None, None], grid, affine).item()
    unmoved = equivariance_loss(grid, grid, affine).item()
    assert right < 1e-5
    assert off > 0.05 and unmoved > off * 0.5 and unmoved > 0.02
    # warp_by samples at T(p): a shift of b moves the content by -b, checked against slicing.
    x = torch.rand(1, 3, size, size)
    shift = torch.tensor([[[1.0, 0.0, 2 * px], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(warp_by(x, shift)[..., :, :-2], x[..., :, 2:])
    # The sampled warps stay inside their ranges.
    a = random_affine(500, 10.0, 0.2, 0.05, torch.Generator().manual_seed(1), torch.device("cpu"))
    scale = torch.linalg.det(a[:, :, :2]).sqrt()
    turn = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))
    assert float(turn.abs().max()) <= 10.0 + 1e-4 and float(turn.abs().max()) > 9.0
    assert 0.8 - 1e-5 <= float(scale.min()) and float(scale.max()) <= 1.2 + 1e-5
    assert float(a[:, :, 2].abs().max()) <= 0.05 + 1e-6


def test_equivariance_terms_train_and_are_logged(setup, tmp_path):
    res = _train(setup, tmp_path / "eq", "--max-steps", "2", "--set", "encoder.equivariance=5",
                 "--set", "encoder.warped_consistency=5")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "eq" / "metrics.jsonl").read_text().splitlines()]
    for key in ("equivariance", "warped_consistency"):
        assert all(np.isfinite(r[key]) and r[key] > 0 for r in rows), key
    res = _train(setup, tmp_path / "plain", "--max-steps", "1")
    plain = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[0])
    assert "equivariance" not in plain and "warped_consistency" not in plain
