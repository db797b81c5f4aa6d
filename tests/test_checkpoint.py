"""Checkpoints: one weights_only-safe format, round trips, clear errors for bad files."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from coordgan_cli.config import load_recipe
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    capture_rng_state,
    checkpoint_recipe,
    file_sha256,
    load_checkpoint,
    load_state_strict,
    restore_rng_state,
    save_checkpoint,
)
from coordgan_cli.models import Generator, generator_kwargs

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPES / "tiny.toml")


def _payload(recipe, step: int = 7) -> dict:
    torch.manual_seed(0)
    g = Generator(**generator_kwargs(recipe.model))
    opt = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.99))
    image, _ = g(torch.randn(2, recipe.model.latent_dim), torch.randn(2, recipe.model.latent_dim))
    image.mean().backward()
    opt.step()
    return {"kind": "generator", "step": step, "config": recipe.to_json(),
            "networks": {"generator": g.state_dict()}, "ema": {"generator": g.state_dict()},
            "optimizers": {"generator": opt.state_dict()}, "rng": capture_rng_state(),
            "extra": {"kimg": 0.5, "note": "x"}}, g, opt


def test_round_trip(tmp_path: Path, recipe) -> None:
    payload, g, opt = _payload(recipe)
    path = save_checkpoint(tmp_path / "run" / "latest.pt", payload)
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]  # no temp file left behind
    data = load_checkpoint(path)
    assert data["format"] == FORMAT and data["format_version"] == FORMAT_VERSION
    assert data["step"] == 7 and data["kind"] == "generator" and data["extra"] == {"kimg": 0.5, "note": "x"}
    assert checkpoint_recipe(data, path) == recipe
    g2 = Generator(**generator_kwargs(checkpoint_recipe(data).model))
    load_state_strict(g2, data["networks"]["generator"], "generator", path)
    for (k, a), b in zip(g.state_dict().items(), g2.state_dict().values()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.Adam(g2.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt2.load_state_dict(data["optimizers"]["generator"])
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"])
    assert len(file_sha256(path)) == 64 and file_sha256(path) == file_sha256(path)


def test_rng_state_restores_every_generator() -> None:
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_step_comes_from_contents(tmp_path: Path, recipe) -> None:
    payload, *_ = _payload(recipe, step=1234)
    path = save_checkpoint(tmp_path / "step-1.pt", payload)
    assert load_checkpoint(path)["step"] == 1234


def test_save_refuses_objects_that_would_need_code(tmp_path: Path, recipe) -> None:
    payload, *_ = _payload(recipe)
    payload["extra"] = {"args": argparse.Namespace(lr=1)}
    with pytest.raises(TypeError, match="extra.args"):
        save_checkpoint(tmp_path / "a.pt", payload)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "empty", "plain-torch", "pickled-object", "newer"])
def test_bad_files_give_clear_errors(tmp_path: Path, recipe, case: str) -> None:
    payload, *_ = _payload(recipe)
    good = save_checkpoint(tmp_path / "good.pt", payload)
    path = tmp_path / f"{case}.pt"
    expected = {
        "missing": "not found",
        "truncated": "truncated",
        "text": "not a readable torch checkpoint",
        "empty": "not a readable torch checkpoint",
        "plain-torch": "not a coordgan checkpoint",
        "pickled-object": "refusing to run code",
        "newer": "newer",
    }[case]
    if case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "text":
        path.write_text("step: 5\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "plain-torch":
        torch.save({"state_dict": {}}, path)
    elif case == "pickled-object":
        torch.save({"format": FORMAT, "args": argparse.Namespace(lr=1)}, path)
    elif case == "newer":
        torch.save({**payload, "format": FORMAT, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(path) in err.value.message and expected in err.value.message


def test_other_architecture_is_a_clear_error(tmp_path: Path, recipe) -> None:
    payload, *_ = _payload(recipe)
    path = save_checkpoint(tmp_path / "g.pt", payload)
    data = load_checkpoint(path)
    import dataclasses

    wider = dataclasses.replace(recipe.model, synthesis_channels=recipe.model.synthesis_channels * 2)
    with pytest.raises(UserError) as err:
        load_state_strict(Generator(**generator_kwargs(wider)), data["networks"]["generator"], "generator", path)
    msg = err.value.message
    assert str(path) in msg and "another architecture" in msg and "shape mismatch" in msg
    deeper = dataclasses.replace(recipe.model, synthesis_layers=recipe.model.synthesis_layers + 2)
    with pytest.raises(UserError, match="missing"):
        load_state_strict(Generator(**generator_kwargs(deeper)), data["networks"]["generator"], "generator", path)
