"""`train-matcher --data`: warped pairs with exact correspondence, the projection head, its use."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.backbones import load_backbone
from coordgan_cli.cli import app
from coordgan_cli.config import Recipe
from coordgan_cli.correspondence.projection_head import HeadEncoder, ProjectionHead, load_head
from coordgan_cli.data.warp_pairs import (WarpPairSource, grid_coordinates, identity_grid, random_warp,
                                          warp_image)
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import load_checkpoint
from coordgan_cli.training.adapt import CachedFeatures, head_loss

RED, BLUE = (220, 30, 30), (30, 40, 220)


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(80, 100), (120, 90), (96, 96)]):
        Image.fromarray(smooth_image(h, w, i)).save(folder / ("sub" if i == 2 else ".") / f"p{i}.png")
    return folder


def _run(*args):
    return CliRunner().invoke(app, ["--device", "cpu", "--quiet", *map(str, args)])


TINY = ["--set", "matcher.adapt_size=96", "--set", "matcher.batch=2", "--set", "matcher.samples=32",
        "--set", "matcher.head_channels=16", "--set", "matcher.steps=3", "--set", "schedule.log_every=1"]


# --- the pairs ----------------------------------------------------------------------------------

def test_integer_translation_moves_pixels_exactly():
    image = torch.from_numpy(smooth_image(20, 20, 3)).permute(2, 0, 1).float() / 127.5 - 1
    grid = identity_grid(20).clone()
    grid[..., 0] += 2 * 2.0 / 19  # B(x, y) = A(x + 2, y)
    grid[..., 1] -= 1 * 2.0 / 19  # ... and A(y - 1)
    b = warp_image(image, grid)
    assert torch.allclose(b[:, 1:, :18], image[:, :19, 2:], atol=1e-6)
    assert b[:, :, 18:].abs().max() < 1e-6 and b[:, 0].abs().max() < 1e-6  # outside A: zeros


def bilinear_reference(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Slow per-pixel bilinear sample of (C, H, W) at pixel position (x, y), zeros outside."""
    c, h, w = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = np.zeros(c)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * image[:, yy, xx]
    return out


def test_warped_view_matches_a_slow_per_pixel_reference(photos):
    source = WarpPairSource(photos, 40, warp=0.2, elastic=0.05, jitter=0.0)
    (index, pair), = source.sample_indexed(torch.Generator().manual_seed(5), 1)
    a, b = pair.image_a.double().numpy(), pair.image_b.double().numpy()
    coords_b, valid_b = pair.coords_b.double().numpy(), pair.valid_b.numpy()
    assert torch.equal(pair.image_a, source.view_a(index))
    assert torch.allclose(pair.coords_a.permute(1, 2, 0), identity_grid(40).float())  # A: its own pixel grid
    assert 0.5 < valid_b.mean() < 1.0  # the warp moves part of B outside A
    for i in range(40):
        for j in range(40):
            x, y = (coords_b[:, i, j] + 1) / 2 * 39  # the A position (pixels) B's pixel (i, j) shows
            assert valid_b[i, j] == (0 <= x <= 39 and 0 <= y <= 39)
            np.testing.assert_allclose(b[:, i, j], bilinear_reference(a, x, y), atol=1e-5)


def test_pairs_are_deterministic_for_a_seed_and_jitter_changes_colour_only(photos):
    plain = WarpPairSource(photos, 48, jitter=0.0)
    jittered = WarpPairSource(photos, 48, jitter=0.3)
    p1 = plain.sample(torch.Generator().manual_seed(1), 2)
    p2 = plain.sample(torch.Generator().manual_seed(1), 2)
    p3 = plain.sample(torch.Generator().manual_seed(2), 2)
    pj = jittered.sample(torch.Generator().manual_seed(1), 2)
    assert all(torch.equal(a.image_b, b.image_b) and torch.equal(a.coords_b, b.coords_b) for a, b in zip(p1, p2))
    assert not torch.equal(p1[0].coords_b, p3[0].coords_b)
    assert torch.equal(p1[0].coords_b, pj[0].coords_b) and not torch.equal(p1[0].image_b, pj[0].image_b)
    assert plain.describe()["images"] == 3 and len(plain) == 3


def test_random_warp_stays_near_identity():
    grid = random_warp(torch.Generator().manual_seed(0), 32, 0.1, 0.02)
    assert grid.shape == (32, 32, 2)
    assert (grid - identity_grid(32)).abs().max() < 2 * 0.1 + 0.02 + 1e-9 + 0.1 * 0.5  # zoom + corner + elastic
    still = random_warp(torch.Generator().manual_seed(0), 32, 0.0, 0.0)
    assert torch.allclose(still, identity_grid(32))


def test_grid_coordinates_are_cell_centres():
    coords = identity_grid(64).permute(2, 0, 1)
    valid = torch.ones(64, 64, dtype=torch.bool)
    valid[:, :3] = False
    c, v = grid_coordinates(coords, valid, (8, 8))
    centres = torch.tensor([2 * (8 * j + 3.5) / 63 - 1 for j in range(8)])
    assert torch.allclose(c[0, 0], centres, atol=1e-6) and torch.allclose(c[1, :, 0], centres, atol=1e-6)
    assert not v[:, 0].any() and v[:, 1:].all()  # a cell is valid only when all its pixels are


def test_missing_or_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        WarpPairSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        WarpPairSource(tmp_path / "empty")


# --- the head and its loss ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_backbone():
    torch.set_num_threads(1)
    return load_backbone("inception", layers=["conv_4", "mixed_2"], stride=8)


def test_loss_is_lower_for_true_correspondences_than_for_wrong_ones(photos, small_backbone):
    cfg = dataclasses.replace(Recipe().matcher, samples=48)
    source = WarpPairSource(photos, 96, warp=0.1, elastic=0.0, jitter=0.0)
    torch.manual_seed(0)
    head = ProjectionHead(small_backbone.channels, 32)
    features = CachedFeatures(small_backbone, source, torch.device("cpu"))
    draws = source.sample_indexed(torch.Generator().manual_seed(0), 2)
    right, stats = head_loss(head, draws, features, cfg, torch.Generator().manual_seed(1))
    wrong_draws = [(i, dataclasses.replace(p, coords_b=p.coords_b.flip(1, 2))) for i, p in draws]  # rotated 180°
    wrong, wrong_stats = head_loss(head, wrong_draws, features, cfg, torch.Generator().manual_seed(1))
    assert stats["positives"] >= 20 and 0 <= stats["accuracy"] <= 1
    # Even an untrained head keeps the backbone's similarity of a point and its warped copy.
    assert float(right.detach()) < float(wrong.detach()) - 0.1 and stats["accuracy"] > wrong_stats["accuracy"] + 0.2
    right.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_head_encoder_applies_the_head_and_refuses_another_backbone(small_backbone):
    torch.manual_seed(0)
    head = ProjectionHead(small_backbone.channels, 8)
    record = {"name": "inception", "layers": ["conv_4", "mixed_2"], "stride": 8, "channels": small_backbone.channels}
    encoder = HeadEncoder(small_backbone, 96, head, record, source="h.pt")
    image = smooth_image(70, 90, 1)
    from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder

    raw = HypercolumnEncoder(small_backbone, 96).encode([image])
    with torch.no_grad():
        expected = head(raw.clone())
    assert torch.allclose(encoder.encode([image]), expected, atol=1e-6)
    with pytest.raises(UserError, match="h.pt: trained on backbone inception layers \\['mixed_2'\\]"):
        HeadEncoder(small_backbone, 96, head, {**record, "layers": ["mixed_2"]}, source="h.pt")


# --- the CLI ------------------------------------------------------------------------------------

def test_train_matcher_data_end_to_end_and_used_by_propagate(tmp_path, photos):
    out = tmp_path / "run"
    result = _run("train-matcher", "--data", photos, "--out", out, *TINY, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["kind"] == "warps" and config["source"]["images"] == 3
    assert config["backbone"]["name"] == "inception" and config["recipe"]["matcher"]["head_channels"] == 16
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 and m["positives"] >= 2 for m in lines)
    data = load_checkpoint(out / "latest.pt")
    assert data["kind"] == "matcher" and data["step"] == 2 and set(data["networks"]) == {"head"}
    head, record = load_head(out / "latest.pt")
    assert not head.training and head(torch.zeros(1, record["channels"], 3, 4)).shape == (1, 16, 3, 4)

    def halves(h, w, left, right):
        image = np.zeros((h, w, 3), np.uint8)
        image[:, : w // 2], image[:, w // 2:] = left, right
        return image

    mask = np.ones((64, 64), np.uint8)
    mask[:, 32:] = 2
    Image.fromarray(halves(64, 64, RED, BLUE)).save(tmp_path / "ref.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "ref_mask.png")
    (tmp_path / "q").mkdir()
    Image.fromarray(halves(48, 80, BLUE, RED)).save(tmp_path / "q" / "a.png")
    labelled = _run("propagate", "--matcher", "features", "--matcher-ckpt", out / "latest.pt",
                    "--ref", tmp_path / "ref.png", "--mask", tmp_path / "ref_mask.png", "--queries", tmp_path / "q",
                    "--out", tmp_path / "labels", "--work-size", "96", "--json")
    assert labelled.exit_code == 0, labelled.output
    from coordgan_cli.io.masks import read_mask

    a = read_mask(tmp_path / "labels" / "labels" / "a.png")
    # A 2-step head on 3 noise photos: the labels still follow the colours (mostly).
    assert a.shape == (48, 80) and (a[:, :28] == 2).mean() > 0.75 and (a[:, 52:] == 1).mean() > 0.75


def test_train_matcher_data_resume_is_exact(tmp_path, photos):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _run("train-matcher", "--data", photos, "--out", straight, *TINY).exit_code == 0
    assert _run("train-matcher", "--data", photos, "--out", resumed, *TINY, "--max-steps", "1").exit_code == 0
    assert load_checkpoint(resumed / "latest.pt")["step"] == 1
    assert _run("train-matcher", "--data", photos, "--out", resumed, *TINY).exit_code == 0
    a, b = load_checkpoint(straight / "latest.pt"), load_checkpoint(resumed / "latest.pt")
    assert a["step"] == b["step"] == 3
    for key, value in a["networks"]["head"].items():
        assert torch.equal(value, b["networks"]["head"][key]), key

    def losses(run):
        return [(m["step"], m["loss"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(straight) == losses(resumed) and len(losses(straight)) == 3
    other = _run("train-matcher", "--data", photos, "--out", resumed, *TINY, "--set", "matcher.warp=0.3")
    assert other.exit_code == 2 and "another matcher recipe" in other.output


def test_train_matcher_data_errors(tmp_path, photos):
    both = _run("train-matcher", "--data", photos, "--gan", tmp_path / "g.pt", "--out", tmp_path / "r")
    assert both.exit_code == 2 and "exactly one pair source" in both.output
    missing = _run("train-matcher", "--data", tmp_path / "nope", "--out", tmp_path / "r")
    assert missing.exit_code == 2 and "not a folder" in missing.output
    images = _run("train-matcher", "--data", photos, "--images", photos, "--out", tmp_path / "r")
    assert images.exit_code == 2 and "--images belongs to --store" in images.output
    no_recipe = _run("train-matcher", "--store", tmp_path / "s.h5", "--out", tmp_path / "r")
    assert no_recipe.exit_code == 2 and "give a RECIPE" in no_recipe.output
    assert not (tmp_path / "r").exists()
    dry = _run("train-matcher", "--data", photos, "--out", tmp_path / "r", "--dry-run", *TINY)
    assert dry.exit_code == 0 and '"kind": "warps"' in dry.output and not (tmp_path / "r").exists()


def test_a_head_is_not_a_correlation_matcher(tmp_path, photos):
    from coordgan_cli.training.matcher import load_matcher

    out = tmp_path / "run"
    assert _run("train-matcher", "--data", photos, "--out", out, *TINY, "--max-steps", "1").exit_code == 0
    with pytest.raises(UserError, match="a projection head .* --matcher features --matcher-ckpt"):
        load_matcher(out / "latest.pt")
    from coordgan_cli.labelling import make_matcher

    with pytest.raises(UserError, match="trained on backbone inception"):
        make_matcher("features", matcher_ckpt=out / "latest.pt", layers=["conv_4"], work_size=96)



def test_a_correlation_matcher_is_not_a_head(tmp_path):
    from coordgan_cli.io.checkpoint import save_checkpoint

    path = tmp_path / "matcher.pt"
    save_checkpoint(path, {"kind": "matcher", "step": 1, "config": Recipe().to_json(),
                           "networks": {"matcher": {"w": torch.zeros(2)}}})
    with pytest.raises(UserError, match=f"{path}: not a projection head"):
        load_head(path)
