"""`coordgan info` on recipes and checkpoints, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import load_recipe
from coordgan_cli.io.checkpoint import save_checkpoint
from coordgan_cli.models import build_networks

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()
KEYS = {"generator", "mapping_structure", "mapping_texture", "warp", "synthesis", "discriminator",
        "patch_discriminator", "encoder"}
PAPER = {"generator": 35.3, "synthesis": 30.5, "mapping_structure": 2.1, "mapping_texture": 2.1, "warp": 0.53,
         "discriminator": 28.4, "patch_discriminator": 4.5, "encoder": 41.0}


def test_info_recipe_json_keys_and_paper_counts() -> None:
    result = runner.invoke(app, ["info", str(RECIPES / "celebamask-hq-128.toml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"config", "parameters"}
    assert set(data["parameters"]) == KEYS
    for name, millions in PAPER.items():
        assert abs(data["parameters"][name] / 1e6 - millions) <= 0.03 * millions
    assert data["config"]["model"]["size"] == 128 and data["config"]["name"] == "celebamask-hq-128"


def test_info_every_shipped_paper_recipe_resolves() -> None:
    for name in ("stanford-cars-128", "afhq-cat-128", "tiny"):
        result = runner.invoke(app, ["info", str(RECIPES / f"{name}.toml"), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["config"]["name"] == name


def test_info_recipe_table_and_set() -> None:
    result = runner.invoke(app, ["info", str(RECIPES / "tiny.toml"), "--set", "model.backward_mlp=true",
                                 "--set", "optim.batch=8"])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.stdout and "patch_discriminator" in result.stdout and "backward" in result.stdout
    result = runner.invoke(app, ["info", str(RECIPES / "tiny.toml"), "--json", "--set", "optim.batch=8"])
    assert json.loads(result.stdout)["config"]["optim"]["batch"] == 8


def test_info_checkpoint(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "tiny.toml")
    nets = build_networks(recipe.model)
    path = save_checkpoint(tmp_path / "latest.pt", {
        "kind": "generator", "step": 42, "config": recipe.to_json(),
        "networks": {k: nets[k].state_dict() for k in ("generator", "discriminator", "patch_discriminator")},
        "ema": {"generator": nets["generator"].state_dict()},
    })
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"config", "parameters", "checkpoint"} <= set(data)
    ck = data["checkpoint"]
    assert ck["step"] == 42 and ck["kind"] == "generator" and ck["format_version"] == 1
    assert set(ck["networks"]) == {"generator", "discriminator", "patch_discriminator"} and ck["ema"] == ["generator"]
    assert data["config"]["name"] == "tiny" and set(data["parameters"]) == KEYS
    text = runner.invoke(app, ["info", str(path)])
    assert text.exit_code == 0 and "step 42" in text.stdout
    bad = runner.invoke(app, ["info", str(path), "--set", "model.size=64"])
    assert bad.exit_code == 2 and "--set" in bad.stderr


def test_info_bad_targets(tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "no such file" in result.stderr
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    result = runner.invoke(app, ["info", str(junk)])
    assert result.exit_code == 2 and str(junk) in result.stderr and "Traceback" not in result.output


def test_info_generator_recipe_whose_default_encoder_does_not_fit() -> None:
    # synthetic-64 sizes no encoder (its encoder recipe does); info used to crash on it.
    result = runner.invoke(app, ["info", str(RECIPES / "synthetic-64.toml"), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)["parameters"]
    assert "encoder" not in counts and counts["generator"] > 0
