"""Recipe validation: unknown keys (with the nearest valid key), wrong types, ranges, --set, the CLI's one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import ModelConfig, Recipe, load_recipe, recipe_from_json
from coordgan_cli.errors import UserError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def _error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as err:
        load_recipe(path, overrides)
    return err.value.message


def test_paper_recipes_are_the_paper_defaults() -> None:
    for name in ("celebamask-hq-128", "stanford-cars-128", "afhq-cat-128"):
        recipe = load_recipe(RECIPES / f"{name}.toml")
        assert recipe.name == name
        assert recipe.model == ModelConfig()  # every size explicit in the file equals the paper default
        assert recipe.losses.chamfer == 100.0 and recipe.losses.warp == 5.0 and recipe.optim.batch == 16
        assert recipe_from_json(recipe.to_json()) == recipe


def test_unknown_key_names_file_key_and_nearest(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "[model]\nsynthesis_chanels = 64\n")
    msg = _error(path)
    assert str(path) in msg and "model.synthesis_chanels" in msg and "synthesis_channels" in msg


def test_unknown_section(tmp_path: Path) -> None:
    msg = _error(_recipe(tmp_path, "[modle]\nsize = 64\n"))
    assert "[modle]" in msg and "model" in msg


def test_wrong_type(tmp_path: Path) -> None:
    path = _recipe(tmp_path, '[optim]\nbatch = "sixteen"\n')
    msg = _error(path)
    assert str(path) in msg and "optim.batch" in msg and "integer" in msg
    msg = _error(_recipe(tmp_path, '[model]\nnoise = "loud"\n'))
    assert "model.noise" in msg and "'const'" in msg


def test_out_of_range(tmp_path: Path) -> None:
    msg = _error(_recipe(tmp_path, "[losses]\nwarp_reach = 0.0\n"))
    assert "losses.warp_reach" in msg and "> 0" in msg
    msg = _error(_recipe(tmp_path, "[losses]\nwarp_tau = -0.01\n"))  # 0 is allowed: derived from warp_reach
    assert "losses.warp_tau" in msg and ">= 0" in msg
    msg = _error(_recipe(tmp_path, "[losses]\npatch_max = 1.5\n"))
    assert "losses.patch_max" in msg and "<= 1" in msg


def test_inconsistent_sizes(tmp_path: Path) -> None:
    msg = _error(_recipe(tmp_path, "[model]\nsize = 256\n"))
    assert "model.size" in msg and "upsampling" in msg


def test_set_overrides(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "tiny.toml", ["optim.batch=8", "model.noise=random", "model.highres_channels=[8]",
                                                "model.size=64"])
    assert recipe.optim.batch == 8 and recipe.model.noise == "random" and recipe.model.highres_channels == [8]
    msg = _error(RECIPES / "tiny.toml", ("model.sise=64",))
    assert "model.sise" in msg and "size" in msg
    with pytest.raises(UserError, match="section.key=value"):
        load_recipe(RECIPES / "tiny.toml", ["batch=8"])


def test_misspelt_key_through_the_cli_is_one_line(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "[model]\nlatent_dimm = 64\n")
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "latent_dimm" in lines[0] and "latent_dim" in lines[0] and str(path) in lines[0]
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["info", str(RECIPES / "tiny.toml"), "--set", "optim.bacth=4"])
    assert result.exit_code != 0 and "optim.bacth" in result.stderr


def test_default_recipe_round_trips() -> None:
    assert recipe_from_json(Recipe().to_json()) == Recipe()


def test_stored_configs_without_the_issue_14_fields_keep_their_old_meaning() -> None:
    """A checkpoint's config written before a field existed is read with that field's old
    behaviour, not today's default; a config that has the field keeps its value."""
    import json

    from coordgan_cli.config import Recipe, recipe_from_json

    data = json.loads(Recipe().to_json())
    for section, key in (("model", "warp_skip"), ("losses", "gan_start"), ("losses", "texture_distance"),
                         ("losses", "structure_swap_start")):
        del data[section][key]
    data["losses"]["gan"] = 3.0
    old = recipe_from_json(json.dumps(data))
    assert old.model.warp_skip is False and old.losses.texture_distance == "perceptual"
    assert old.losses.gan_start == 3.0 and old.losses.structure_swap_start == 0
    new = recipe_from_json(Recipe().to_json())
    assert new.model.warp_skip is True and new.losses.texture_distance == "layout"
    assert new.losses.gan_start == 1.0 and new.losses.structure_swap_start == 10000
