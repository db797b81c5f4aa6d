"""The models that ship inside the package: intact, loadable with weights_only=True, and useful."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.inference import DEFAULT_MATCHER, SHIPPED_DIR, resolve_matcher
from coordgan_cli.io.checkpoint import file_sha256, load_checkpoint
from coordgan_cli.io.masks import read_mask

SHIPPED = sorted(SHIPPED_DIR.glob("*.pt"))


def test_a_matcher_ships():
    assert (SHIPPED_DIR / f"{DEFAULT_MATCHER}.pt") in SHIPPED
    assert resolve_matcher(None) == SHIPPED_DIR / f"{DEFAULT_MATCHER}.pt"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_matches_its_record_and_loads_safely(path):
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["file"] == path.name
    assert file_sha256(path) == record["sha256"]
    data = load_checkpoint(path)  # weights_only=True inside
    assert data["kind"] in ("matcher", "encoder", "generator")
    assert "optimizers" not in data  # inference weights only


def _miou(pred: np.ndarray, true: np.ndarray) -> float:
    classes = [c for c in np.unique(true) if c not in (0, 255)]
    ious = []
    for c in classes:
        inter = np.logical_and(pred == c, true == c).sum()
        union = np.logical_or(pred == c, true == c).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def test_shipped_matcher_labels_unseen_synthetic_faces_well_above_identity(tmp_path):
    runner = CliRunner()
    data = tmp_path / "faces"
    result = runner.invoke(app, ["--quiet", "synth", str(data), "--category", "faces", "--count", "4",
                                 "--size", "64", "--seed", "4242"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = runner.invoke(app, ["--quiet", "propagate", "--matcher", "correlation",
                                 "--ref", str(data / "images/000000.png"), "--mask", str(data / "masks/000000.png"),
                                 "--queries", str(data / "images"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ref_mask = read_mask(data / "masks/000000.png")
    ours, identity = [], []
    for i in range(1, 4):
        true = read_mask(data / f"masks/{i:06d}.png")
        ours.append(_miou(read_mask(out / f"labels/{i:06d}.png"), true))
        identity.append(_miou(ref_mask, true))
    assert np.mean(ours) > np.mean(identity) + 0.15, (ours, identity)
