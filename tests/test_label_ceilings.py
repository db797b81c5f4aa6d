"""scripts/label_ceilings.py: the labelling ceilings of a synthetic set, on a tiny one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from typer.testing import CliRunner

from coordgan_cli.cli import app

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_ceilings.py"


def _load():
    spec = importlib.util.spec_from_file_location("label_ceilings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_true_maps_label_far_better_than_copying_the_mask(tmp_path, capsys):
    res = CliRunner().invoke(app, ["--quiet", "synth", str(tmp_path / "set"), "--category", "faces", "--count", "6",
                                   "--size", "48", "--seed", "3"])
    assert res.exit_code == 0, res.output
    ceilings = _load()
    assert ceilings.main([str(tmp_path / "set"), "--map-size", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    miou = out["miou"]
    assert out["queries"] == 5
    assert miou["true maps"] > 0.6 and miou["true maps"] > miou["identity"] + 0.3
    assert miou["true maps at 12 px"] > miou["identity"]
    assert miou["affine (keypoints)"] > miou["identity"]
    # Not a synth folder: one clear error, exit 2.
    assert ceilings.main([str(tmp_path)]) == 2
    assert "correspondence.h5: missing" in capsys.readouterr().err
