"""coordgan swap: grid layout, the cells are G(structure_i, texture_j), determinism, source errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.inference import load_correspondence_model, tensor_to_images
from coordgan_cli.io.images import read_image
from coordgan_cli.swapping import GAP

from tiny_checkpoints import make_encoder_checkpoint, make_generator_checkpoint, make_images

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("swap")
    gen = make_generator_checkpoint(d / "gen.pt")
    enc = make_encoder_checkpoint(d / "enc.pt", gen)
    images = make_images(d / "imgs", 2, sub_every=0)
    return {"gen": gen, "enc": enc, "img": images[0], "img2": images[1]}


def _tile(grid: np.ndarray, row: int, col: int, size: int = 32) -> np.ndarray:
    step = size + GAP
    return grid[row * step:row * step + size, col * step:col * step + size]


def test_seed_grid_is_deterministic_and_swaps(ckpts, tmp_path):
    args = ["swap", str(ckpts["gen"]), "--structure", "seed:1", "--structure", "seed:2",
            "--texture", "seed:3", "--texture", "seed:4", "--texture", "seed:5"]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    res = runner.invoke(app, [*args, "--out", str(a), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoint_kind"] == "generator"
    assert runner.invoke(app, [*args, "--out", str(b)]).exit_code == 0
    ga, gb = read_image(a), read_image(b)
    assert np.array_equal(ga, gb)
    assert ga.shape == (3 * 34, 5 * 34, 3)
    # Cell (structure i, texture j) is G(corr(s_i), W+(t_j)) with constant noise.
    model = load_correspondence_model(ckpts["gen"], "cpu", allow_generator_only=True)
    with torch.no_grad():
        w_s, _ = model.sample_codes(2)
        _, w_t = model.sample_codes(4)
        expected = tensor_to_images(model.synthesize(w_s, w_t))[0]
    assert np.array_equal(_tile(ga, 2, 3), expected)
    # Row pictures are the seeds' own images; header pictures are the texture seeds' images.
    with torch.no_grad():
        own = tensor_to_images(model.synthesize(*model.sample_codes(5)))[0]
    assert np.array_equal(_tile(ga, 0, 4), own)
    # The map tile of a row does not depend on the texture: it is coloured x red, y green, blue 0.
    assert _tile(ga, 1, 1)[..., 2].max() == 0


def test_real_images_need_an_encoder(ckpts, tmp_path):
    res = runner.invoke(app, ["swap", str(ckpts["gen"]), "--structure", str(ckpts["img"]), "--texture", "seed:1",
                              "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "encoder checkpoint" in res.stderr
    out = tmp_path / "e.png"
    res = runner.invoke(app, ["swap", str(ckpts["enc"]), "--structure", str(ckpts["img"]), "--structure", "seed:7",
                              "--texture", str(ckpts["img2"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    model = load_correspondence_model(ckpts["enc"], "cpu")
    img, img2 = read_image(ckpts["img"]), read_image(ckpts["img2"])
    with torch.no_grad():
        w_s, _ = model.encode_tensor([img])
        _, w_t = model.encode_tensor([img2])
        expected = tensor_to_images(model.synthesize(w_s, w_t))[0]
    assert np.array_equal(_tile(read_image(out), 1, 2), expected)


def test_bad_sources(ckpts, tmp_path):
    res = runner.invoke(app, ["swap", str(ckpts["gen"]), "--structure", "seed:x", "--texture", "seed:1",
                              "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "seed:N" in res.stderr
    res = runner.invoke(app, ["swap", str(ckpts["enc"]), "--structure", str(tmp_path / "nope.png"),
                              "--texture", "seed:1", "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "nope.png" in res.stderr
