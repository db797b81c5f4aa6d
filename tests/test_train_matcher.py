"""``coordgan train-matcher`` end to end on a tiny ground-truth store, resume, errors, --gan source."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import load_recipe
from coordgan_cli.io.checkpoint import load_checkpoint, save_checkpoint
from coordgan_cli.io.images import write_image
from coordgan_cli.io.store import StoreWriter
from coordgan_cli.training.matcher import GanPairSource, StorePairSource, load_matcher, matcher_loss, step_generator

SIZE = 24

RECIPE = """
name = "matcher-test"
[matcher]
channels = 8
width = 4
depth = 1
samples = 16
batch = 2
steps = 3
background_negatives = 4
[schedule]
log_every = 1
checkpoint_every = 1
"""


def make_store(root: Path, n: int = 4, seed: int = 0) -> Path:
    """A minimal ground-truth set: an elliptic object under a random similarity pose, painted by
    its canonical coordinate (quadrant colours + stripes) over a random background."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    centres = (np.arange(SIZE) + 0.5) * 2 / SIZE - 1
    px, py = np.meshgrid(centres, centres)
    with StoreWriter(root / "correspondence.h5", size=(SIZE, SIZE), source="ground-truth", with_valid=True) as w:
        for i in range(n):
            angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(1.0, 1.4)
            tx, ty = rng.uniform(-0.15, 0.15, 2)
            c, s = math.cos(angle), math.sin(angle)
            u = np.clip(scale * (c * (px - tx) + s * (py - ty)), -1, 1)
            v = np.clip(scale * (-s * (px - tx) + c * (py - ty)), -1, 1)
            valid = u**2 + (v / 0.8) ** 2 < 0.7
            image = np.empty((SIZE, SIZE, 3), np.float64)
            image[:] = rng.uniform(0, 1, 3)
            quadrant = (u > 0).astype(int) + 2 * (v > 0)
            colours = rng.uniform(0.2, 1, (4, 3))
            paint = colours[quadrant] * (0.75 + 0.25 * np.sin(6 * u))[..., None]
            image[valid] = paint[valid]
            name = f"{i:06d}.png"
            write_image(root / "images" / name, (image * 255).astype(np.uint8))
            w.append(name, np.stack([u, v]).astype(np.float32), valid=valid)
    return root / "correspondence.h5"


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "synth")


@pytest.fixture()
def recipe_path(tmp_path: Path) -> Path:
    p = tmp_path / "matcher.toml"
    p.write_text(RECIPE)
    return p


def _run(*args: str):
    return CliRunner().invoke(app, ["--device", "cpu", "--quiet", *map(str, args)])


def test_train_matcher_end_to_end(tmp_path, store, recipe_path):
    out = tmp_path / "run"
    result = _run("train-matcher", recipe_path, "--out", out, "--store", store, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["matcher"]["channels"] == 8 and config["source"]["rows"] == 4
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 and m["positives"] >= 2 for m in lines)
    data = load_checkpoint(out / "latest.pt")
    assert data["kind"] == "matcher" and data["step"] == 2
    matcher, cfg = load_matcher(out / "latest.pt")
    assert cfg.channels == 8 and not matcher.training
    assert matcher(torch.zeros(1, 3, 10, 12)).shape == (1, 8, 10, 12)


def test_train_matcher_resume_is_exact(tmp_path, store, recipe_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _run("train-matcher", recipe_path, "--out", straight, "--store", store).exit_code == 0
    assert _run("train-matcher", recipe_path, "--out", resumed, "--store", store, "--max-steps", "1").exit_code == 0
    assert load_checkpoint(resumed / "latest.pt")["step"] == 1
    assert _run("train-matcher", recipe_path, "--out", resumed, "--store", store).exit_code == 0
    a, b = load_checkpoint(straight / "latest.pt"), load_checkpoint(resumed / "latest.pt")
    assert a["step"] == b["step"] == 3
    for key, value in a["networks"]["matcher"].items():
        assert torch.equal(value, b["networks"]["matcher"][key]), key

    def losses(run):
        return [(m["step"], m["loss"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(straight) == losses(resumed)


def test_train_matcher_resume_refuses_another_recipe(tmp_path, store, recipe_path):
    out = tmp_path / "run"
    assert _run("train-matcher", recipe_path, "--out", out, "--store", store, "--max-steps", "1").exit_code == 0
    result = _run("train-matcher", recipe_path, "--out", out, "--store", store, "--set", "matcher.margin=0.5")
    assert result.exit_code == 2
    assert "matcher.margin 0.25 → 0.5" in result.output and "new --out" in result.output


def test_train_matcher_errors(tmp_path, store, recipe_path):
    out = tmp_path / "run"
    result = _run("train-matcher", recipe_path, "--out", out)
    assert result.exit_code == 2 and "exactly one pair source" in result.output
    result = _run("train-matcher", recipe_path, "--out", out, "--store", tmp_path / "nope.h5")
    assert result.exit_code == 2 and "nope.h5: file not found" in result.output
    (store.parent / "images" / "000002.png").unlink()
    result = _run("train-matcher", recipe_path, "--out", out, "--store", store)
    assert result.exit_code == 2 and "no image for store row '000002.png'" in result.output
    result = _run("train-matcher", recipe_path, "--out", out, "--store", store, "--set", "matcher.bogus=1")
    assert result.exit_code == 2 and "matcher.bogus" in result.output
    assert not out.exists()


def test_train_matcher_dry_run_writes_nothing(tmp_path, store, recipe_path):
    out = tmp_path / "run"
    result = _run("train-matcher", recipe_path, "--out", out, "--store", store, "--dry-run", "--set", "matcher.lr=0.01")
    assert result.exit_code == 0, result.output
    assert "0.01" in result.output and '"rows": 4' in result.output
    assert not out.exists()


def test_store_pairs_positives_share_coordinates(store):
    source = StorePairSource(store, store.parent / "images")
    pairs = source.sample(step_generator(0, 0), 3)
    assert len(pairs) == 3 and pairs[0].image_a.shape == (3, SIZE, SIZE)
    # Draws depend only on the step generator.
    again = source.sample(step_generator(0, 0), 3)
    assert all(torch.equal(p.coords_a, q.coords_a) and torch.equal(p.image_b, q.image_b) for p, q in zip(pairs, again))


def test_matcher_loss_runs_on_device_and_learns_something(store, device):
    from coordgan_cli.training.matcher import build_matcher

    cfg = load_recipe_text(RECIPE).matcher
    torch.manual_seed(0)
    matcher = build_matcher(cfg).to(device)
    source = StorePairSource(store, store.parent / "images")
    optimizer = torch.optim.Adam(matcher.parameters(), lr=3e-3)
    pairs = source.sample(step_generator(0, 0), 2)
    first = None
    for _ in range(15):  # one fixed batch: the loss must go down when fitted
        loss, _ = matcher_loss(matcher, pairs, dataclasses.replace(cfg, jitter=0.0), step_generator(0, 1), device)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first


def load_recipe_text(text: str):
    import tomllib

    from coordgan_cli.config import recipe_from_dict

    return recipe_from_dict(tomllib.loads(text))


def test_gan_pair_source_from_a_generator_checkpoint(tmp_path):
    from coordgan_cli.models import Generator, generator_kwargs

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny.toml")
    torch.manual_seed(0)
    generator = Generator(**generator_kwargs(recipe.model))
    ckpt = tmp_path / "gan.pt"
    save_checkpoint(ckpt, {"kind": "generator", "step": 0, "config": recipe.to_json(),
                           "networks": {"generator": generator.state_dict()}})
    source = GanPairSource(ckpt, torch.device("cpu"))
    pairs = source.sample(step_generator(0, 0), 2)
    assert len(pairs) == 2
    size = recipe.model.size
    assert pairs[0].image_a.shape == (3, size, size) and pairs[0].coords_a.shape == (2, size, size)
    again = source.sample(step_generator(0, 0), 2)
    assert torch.equal(pairs[1].image_b, again[1].image_b)
    # Different structure codes: the two correspondence maps differ.
    assert not torch.allclose(pairs[0].coords_a, pairs[0].coords_b)


# --- torchrun -----------------------------------------------------------------------------------

def test_shares_of_a_batch_add_up_to_its_loss_and_gradients(store):
    """What each torchrun process computes: its pairs' part of the batch mean, from the same draws."""
    from coordgan_cli.training.matcher import build_matcher

    cfg = dataclasses.replace(load_recipe_text(RECIPE).matcher, batch=3)
    torch.manual_seed(0)
    matcher = build_matcher(cfg)
    pairs = StorePairSource(store, store.parent / "images").sample(step_generator(0, 0), 3)

    def loss_and_grads(share):
        matcher.zero_grad(set_to_none=True)
        loss, stats = matcher_loss(matcher, pairs, cfg, step_generator(0, 1), torch.device("cpu"), share)
        loss.backward()
        return loss.detach(), stats, [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                      for p in matcher.parameters()]

    whole, whole_stats, whole_grads = loss_and_grads(None)
    parts = [loss_and_grads(share) for share in (range(0, 3, 2), range(1, 3, 2))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole)
    assert parts[0][1]["accuracy"] + parts[1][1]["accuracy"] == pytest.approx(whole_stats["accuracy"])
    assert parts[0][1]["positives"] == parts[1][1]["positives"] == whole_stats["positives"]
    for g0, g1, g in zip(parts[0][2], parts[1][2], whole_grads):
        torch.testing.assert_close(g0 + g1, g, rtol=1e-4, atol=1e-6)


def test_batch_must_split_over_the_processes():
    from coordgan_cli.errors import UserError
    from coordgan_cli.training.matcher import check_matcher_batch_split

    cfg = dataclasses.replace(load_recipe_text(RECIPE).matcher, batch=3)
    check_matcher_batch_split(cfg, 1)
    check_matcher_batch_split(cfg, 3)
    with pytest.raises(UserError, match=r"matcher.batch = 3 must split evenly over 2 process\(es\).*matcher.batch=4"):
        check_matcher_batch_split(cfg, 2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, args: list[str]) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = _run(*args)
    assert result.exit_code == 0, f"rank {rank}: {result.output} {result.exception!r}"


def _biases_cancelled_by_group_norm(matcher) -> list[str]:
    """Conv biases followed by a GroupNorm with one channel per group. The norm subtracts them, so
    their gradient is zero in exact arithmetic and Adam turns its rounding noise into ±lr steps:
    they differ between any two summation orders and have no effect on the features."""
    from coordgan_cli.models.matcher import ConvBlock

    return [f"{name}.0.bias" for name, block in matcher.named_modules()
            if isinstance(block, ConvBlock) and block[1].num_groups == block[1].num_channels]


def test_two_process_gloo_equals_one_process_same_global_batch(tmp_path, store, recipe_path):
    import torch.multiprocessing as mp

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    args = ["train-matcher", str(recipe_path), "--store", str(store), "--max-steps", "2", "--out"]
    mp.start_processes(_ddp_worker, args=(2, _free_port(), [*args, str(ddp)]), nprocs=2, join=True,
                       start_method="spawn")
    result = _run(*args, single)
    assert result.exit_code == 0, result.output
    a, b = load_checkpoint(ddp / "latest.pt"), load_checkpoint(single / "latest.pt")
    assert a["step"] == b["step"] == 2
    noise_only = _biases_cancelled_by_group_norm(load_matcher(single / "latest.pt")[0])
    assert noise_only and set(noise_only) < set(b["networks"]["matcher"])
    for key, value in b["networks"]["matcher"].items():
        if key not in noise_only:
            torch.testing.assert_close(a["networks"]["matcher"][key], value, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, key=key: f"{key}: {m}")
    # Adam's first moments are sensitive to the gradients' scale, which Adam's steps are not.
    for index, moments in b["optimizers"]["matcher"]["state"].items():
        torch.testing.assert_close(a["optimizers"]["matcher"]["state"][index]["exp_avg"], moments["exp_avg"],
                                   rtol=1e-4, atol=1e-5)
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        features = [load_matcher(run / "latest.pt")[0](images) for run in (ddp, single)]
    torch.testing.assert_close(*features, rtol=1e-4, atol=1e-5)
    # Rank 0 alone logged, the batch means of both processes.
    logged = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (ddp, single)]
    assert [m["step"] for m in logged[0]] == [1, 2]
    for m, n in zip(*logged):
        assert m["loss"] == pytest.approx(n["loss"], rel=1e-5) and m["accuracy"] == pytest.approx(n["accuracy"])
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
