"""Shipped CoordGAN models: `coordgan models`, --model / default-model resolution in propagate, invert,
swap and evaluate, and `coordgan demo` — against a temporary shipped folder holding a tiny encoder
checkpoint (COORDGAN_SHIPPED_DIR), so these tests do not depend on what this build ships."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coordgan_cli import inference
from coordgan_cli.cli import app
from coordgan_cli.cli.demo import score_labels
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import file_sha256
from coordgan_cli.io.images import read_image
from coordgan_cli.io.masks import read_labels, read_mask, write_mask
from coordgan_cli.io.store import StoreReader
from coordgan_cli.metrics.iou import IoUAccumulator, summarize

from tiny_checkpoints import make_encoder_checkpoint, make_generator_checkpoint

runner = CliRunner()

EVALUATION = {"dataset": "synthetic", "protocol": "fullres", "miou": 0.5,
              "matchers": {"coordinates": {"miou": 0.5}, "correlation": {"available": False, "reason": "no matcher"}},
              "baselines": {"identity": {"miou": 0.125}}, "pck": {"0.05": 0.25, "0.1": 0.75}}


def write_sidecar(pt: Path, **fields) -> dict:
    record = {"name": pt.stem, "kind": "encoder", "file": pt.name, "sha256": file_sha256(pt),
              "file_bytes": pt.stat().st_size, "recipe": "tiny", "training": {"steps": 0},
              "evaluation": EVALUATION, **fields}
    pt.with_suffix(".json").write_text(json.dumps(record))
    return record


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A shipped folder with the default model: a tiny encoder checkpoint (embedding its generator) + sidecar."""
    d = tmp_path_factory.mktemp("shipped")
    gen = make_generator_checkpoint(d.parent / f"{d.name}-gen.pt")
    make_encoder_checkpoint(d / f"{inference.DEFAULT_MODEL}.pt", gen)
    write_sidecar(d / f"{inference.DEFAULT_MODEL}.pt")
    return d


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """A tiny synthetic faces set (4 images, 32 px) with true masks and the ground-truth store."""
    root = tmp_path_factory.mktemp("faces") / "set"
    res = runner.invoke(app, ["--quiet", "synth", str(root), "--category", "faces", "--count", "4", "--size", "32",
                              "--seed", "7"])
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(autouse=True)
def _use_shipped(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(inference.SHIPPED_DIR_ENV, str(shipped))


@pytest.fixture
def nothing_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    empty = tmp_path / "empty-shipped"
    empty.mkdir()
    monkeypatch.setenv(inference.SHIPPED_DIR_ENV, str(empty))
    return empty


def _run(*args):
    return runner.invoke(app, ["--device", "cpu", *[str(a) for a in args]])


def _ok(*args):
    res = _run(*args)
    assert res.exit_code == 0, res.output
    return res


def _error(*args) -> str:
    res = _run(*args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return res.stderr


# ---- resolution ------------------------------------------------------------------------------------


def test_resolve_model_order_and_errors(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = shipped / f"{inference.DEFAULT_MODEL}.pt"
    assert inference.shipped_dir() == shipped
    assert inference.shipped_models() == [inference.DEFAULT_MODEL]
    assert inference.resolve_model(None, None) == default
    assert inference.resolve_model(tmp_path / "mine.pt", None) == tmp_path / "mine.pt"  # explicit path first
    assert inference.resolve_model(None, inference.DEFAULT_MODEL) == default
    with pytest.raises(UserError, match="not both"):
        inference.resolve_model(tmp_path / "mine.pt", inference.DEFAULT_MODEL)
    with pytest.raises(UserError, match=f"'nope' is not shipped.*shipped models: {inference.DEFAULT_MODEL}"):
        inference.resolve_model(None, "nope")
    # The env override also decides where the matcher is looked for: none here.
    with pytest.raises(UserError, match="no feature matcher"):
        inference.resolve_matcher(None)
    monkeypatch.setenv(inference.SHIPPED_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError) as err:
        inference.resolve_model(None, None)
    assert err.value.message == inference.NO_MODEL
    assert "--ckpt" in err.value.message and "--model" in err.value.message
    monkeypatch.delenv(inference.SHIPPED_DIR_ENV)
    assert inference.shipped_dir() == inference.SHIPPED_DIR


# ---- coordgan models -------------------------------------------------------------------------------


def test_models_json_lists_kind_size_hash_and_figures(shipped: Path) -> None:
    records = json.loads(_ok("models", "--json").stdout)
    assert len(records) == 1
    r = records[0]
    pt = shipped / f"{inference.DEFAULT_MODEL}.pt"
    assert (r["name"], r["kind"], r["default_for"], r["hash"]) == (inference.DEFAULT_MODEL, "encoder", "maps", "ok")
    assert r["size_bytes"] == pt.stat().st_size and r["sha256"] == file_sha256(pt)
    assert r["figures"] == {"miou_coordinates": 0.5, "miou_identity": 0.125, "pck@0.05": 0.25, "pck@0.1": 0.75}
    assert r["evaluated_on"] == "synthetic (fullres protocol)" and r["problems"] == []
    table = _ok("models").stdout
    assert inference.DEFAULT_MODEL in table and "50.0 %" in table and "12.5 %" in table


def test_models_shows_mismatch_missing_sidecar_and_missing_file(shipped: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "shipped"
    shutil.copytree(shipped, folder)
    with open(folder / f"{inference.DEFAULT_MODEL}.pt", "ab") as handle:
        handle.write(b"\0")  # damaged after its sidecar was written
    shutil.copy(folder / f"{inference.DEFAULT_MODEL}.pt", folder / "extra.pt")  # no sidecar
    (folder / "gone.json").write_text(json.dumps({"name": "gone", "file": "gone.pt", "sha256": "0" * 64}))
    monkeypatch.setenv(inference.SHIPPED_DIR_ENV, str(folder))
    res = _ok("models", "--json")
    by_name = {r["name"]: r for r in json.loads(res.stdout)}
    assert by_name[inference.DEFAULT_MODEL]["hash"] == "mismatch"
    assert any("differs from the recorded" in p for p in by_name[inference.DEFAULT_MODEL]["problems"])
    assert by_name["extra"]["hash"] == "no sidecar" and by_name["extra"]["kind"] == "encoder"  # read from the file
    assert by_name["gone"]["hash"] == "file missing"
    res = _ok("models")
    assert "MISMATCH" in res.stdout and "differs from the recorded" in res.stderr


# ---- the default model in the commands --------------------------------------------------------------


def test_propagate_without_maps_uses_the_default_model(shipped: Path, faces: Path, tmp_path: Path) -> None:
    ref = ["--ref", faces / "images/000000.png", "--mask", faces / "masks/000000.png", "--queries", faces / "images"]
    res = _ok("propagate", *ref, "--out", tmp_path / "default")
    assert f"shipped model '{inference.DEFAULT_MODEL}'" in res.stderr
    _ok("propagate", *ref, "--out", tmp_path / "named", "--model", inference.DEFAULT_MODEL)
    _ok("propagate", *ref, "--out", tmp_path / "explicit", "--ckpt", shipped / f"{inference.DEFAULT_MODEL}.pt")
    for i in range(4):
        explicit = read_mask(tmp_path / f"explicit/labels/{i:06d}.png")
        assert np.array_equal(read_mask(tmp_path / f"default/labels/{i:06d}.png"), explicit)
        assert np.array_equal(read_mask(tmp_path / f"named/labels/{i:06d}.png"), explicit)
    assert "--model and --ckpt" in _error("propagate", *ref, "--out", tmp_path / "x", "--model",
                                          inference.DEFAULT_MODEL, "--ckpt", shipped / f"{inference.DEFAULT_MODEL}.pt")
    assert "--model and --store" in _error("propagate", *ref, "--out", tmp_path / "x", "--model",
                                           inference.DEFAULT_MODEL, "--store", faces / "correspondence.h5")
    assert "'nope' is not shipped" in _error("propagate", *ref, "--out", tmp_path / "x", "--model", "nope")


def test_invert_input_alone_uses_the_default_model(shipped: Path, faces: Path, tmp_path: Path) -> None:
    ckpt = shipped / f"{inference.DEFAULT_MODEL}.pt"
    res = _ok("invert", faces / "images", "--out", tmp_path / "default.h5")
    assert f"shipped model '{inference.DEFAULT_MODEL}'" in res.stderr
    _ok("invert", "--model", inference.DEFAULT_MODEL, faces / "images", "--out", tmp_path / "named.h5")
    _ok("invert", ckpt, faces / "images", "--out", tmp_path / "explicit.h5")
    stores = {}
    for name in ("default", "named", "explicit"):
        with StoreReader(tmp_path / f"{name}.h5") as reader:
            stores[name] = (list(reader.names), np.stack([reader.correspondence(i) for i in range(len(reader))]))
    assert stores["default"][0] == [f"{i:06d}.png" for i in range(4)]
    for name in ("named", "explicit"):
        assert stores[name][0] == stores["default"][0] and np.array_equal(stores[name][1], stores["default"][1])
    assert "both given" in _error("invert", "--model", inference.DEFAULT_MODEL, ckpt, faces / "images",
                                  "--out", tmp_path / "x.h5")
    assert "needs INPUT after it" in _error("invert", ckpt, "--out", tmp_path / "x.h5")


def test_swap_without_ckpt_uses_the_default_model(shipped: Path, faces: Path, tmp_path: Path) -> None:
    sources = ["--structure", faces / "images/000001.png", "--structure", "seed:3", "--texture", "seed:4"]
    res = _ok("swap", *sources, "--out", tmp_path / "default.png", "--json")
    assert json.loads(res.stdout)["checkpoint"] == str(shipped / f"{inference.DEFAULT_MODEL}.pt")
    _ok("swap", shipped / f"{inference.DEFAULT_MODEL}.pt", *sources, "--out", tmp_path / "explicit.png")
    assert np.array_equal(read_image(tmp_path / "default.png"), read_image(tmp_path / "explicit.png"))
    assert "not both" in _error("swap", shipped / f"{inference.DEFAULT_MODEL}.pt", "--model", inference.DEFAULT_MODEL,
                                *sources, "--out", tmp_path / "x.png")


def test_evaluate_without_ckpt_or_store_uses_the_default_model(faces: Path) -> None:
    base = ["evaluate", "--dataset", "synthetic", "--root", faces, "--refs", "000000", "--queries", "2",
            "--protocol", "fullres", "--swap-pairs", "0", "--recon-images", "0", "--json"]
    default = json.loads(_ok(*base).stdout)
    named = json.loads(_ok(*base, "--model", inference.DEFAULT_MODEL).stdout)
    assert default["maps"] == named["maps"] == f"model {inference.DEFAULT_MODEL}.pt"
    assert default["miou"] == named["miou"]
    assert "not both" in _error(*base, "--model", inference.DEFAULT_MODEL, "--ckpt",
                                inference.shipped_dir() / f"{inference.DEFAULT_MODEL}.pt")


def test_nothing_shipped_is_one_clear_error_everywhere(nothing_shipped: Path, faces: Path, tmp_path: Path) -> None:
    assert json.loads(_ok("models", "--json").stdout) == []
    assert "ships no models" in _ok("models").stderr
    ref = ["--ref", faces / "images/000000.png", "--mask", faces / "masks/000000.png", "--queries", faces / "images"]
    assert "no correspondence maps" in _error("propagate", *ref, "--out", tmp_path / "p")
    assert "ships no CoordGAN model" in _error("invert", faces / "images", "--out", tmp_path / "i.h5")
    assert "ships no CoordGAN model" in _error("swap", "--structure", "seed:1", "--texture", "seed:2",
                                               "--out", tmp_path / "s.png")
    assert "give --ckpt" in _error("evaluate", "--dataset", "synthetic", "--root", faces)
    assert "ships no matcher" in _error("demo", tmp_path / "demo")  # no CoordGAN model, no matcher to fall back to
    assert "ships none" in _error("demo", tmp_path / "demo", "--matcher", "coordinates")
    assert not (tmp_path / "demo").exists()  # refused before writing anything


# ---- coordgan demo ------------------------------------------------------------------------------------


def test_score_labels_is_one_for_true_labels_and_scores_the_identity_baseline(faces: Path, tmp_path: Path) -> None:
    labels = read_labels(faces / "labels.json")
    names = [f"images/{i:06d}.png" for i in (1, 2, 3)]
    for n in names:
        write_mask(tmp_path / "labels" / n, read_mask(faces / "masks" / Path(n).name), labels)
    reference = read_mask(faces / "masks/000000.png")
    ours, identity = score_labels(tmp_path, faces, names, reference, labels.num_classes)
    present = set().union(*(np.unique(read_mask(faces / "masks" / Path(n).name)).tolist() for n in names))
    # Parts absent from every query have no union and score 0 (the paper's rule); every other part 1.
    assert ours.per_class == {c: float(c in present) for c in range(1, labels.num_classes)}
    expected = IoUAccumulator(labels.num_classes)
    for n in names:
        expected.update(reference, read_mask(faces / "masks" / Path(n).name))
    assert identity.miou == pytest.approx(summarize({"r": expected}, labels.num_classes).miou)
    assert identity.miou < ours.miou


def test_demo_end_to_end(shipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = _ok("demo", out, "--count", "3", "--size", "32", "--json")
    result = json.loads(res.stdout)
    assert result == json.loads((out / "demo.json").read_text())
    assert result["model"] == inference.DEFAULT_MODEL and result["queries_scored"] == 3
    assert result["set"] == {"folder": str(out / "faces"), "category": "faces", "count": 4, "size": 32,
                             "seed": 20261125, "difficulty": "medium"}
    # The reference is not a query; every query has labels, an overlay and a heat map.
    assert not (out / "labels/images/000000.png").exists()
    for i in (1, 2, 3):
        for part in ("labels/images/{}.png", "overlays/images/{}.jpg", "confidence/images/{}.png"):
            assert (out / part.format(f"{i:06d}")).is_file()
    # The figures are the labels on disk scored against the true masks (recomputed here).
    labels = read_labels(out / "faces/labels.json")
    ours, identity = IoUAccumulator(labels.num_classes), IoUAccumulator(labels.num_classes)
    reference = read_mask(out / "faces/masks/000000.png")
    for i in (1, 2, 3):
        truth = read_mask(out / f"faces/masks/{i:06d}.png")
        ours.update(read_mask(out / f"labels/images/{i:06d}.png"), truth)
        identity.update(reference, truth)
    assert result["miou"] == pytest.approx(summarize({"m": ours}, labels.num_classes).miou)
    assert result["miou_identity"] == pytest.approx(summarize({"i": identity}, labels.num_classes).miou)
    assert result["classes_scored"] == labels.num_classes - 1 and 0.0 < result["miou_identity"] < 1.0
    report = (out / "report.html").read_text()
    assert f"{100 * result['miou']:.1f} %" in report and f"{100 * result['miou_identity']:.1f} %" in report
    assert "identity baseline" in report
    # A rerun reuses the set and the labels; the figures are the same.
    res = _ok("demo", out, "--count", "3", "--size", "32")
    assert "identity baseline" in res.stderr and "report.html" in res.stderr
    again = json.loads((out / "demo.json").read_text())
    assert (again["miou"], again["miou_identity"]) == (result["miou"], result["miou_identity"])


def test_demo_without_a_coordgan_model_uses_the_shipped_matcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    only_matcher = tmp_path / "shipped"
    only_matcher.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(inference.SHIPPED_DIR / f"{inference.DEFAULT_MATCHER}{suffix}", only_matcher)
    monkeypatch.setenv(inference.SHIPPED_DIR_ENV, str(only_matcher))
    out = tmp_path / "demo"
    res = _ok("demo", out, "--count", "2", "--size", "32", "--json")
    result = json.loads(res.stdout)
    assert "shipped correlation matcher" in res.stderr
    assert (result["model"], result["matcher"]) == (inference.DEFAULT_MATCHER, "correlation")
    labels = read_labels(out / "faces/labels.json")
    ours = IoUAccumulator(labels.num_classes)
    for i in (1, 2):
        ours.update(read_mask(out / f"labels/images/{i:06d}.png"), read_mask(out / f"faces/masks/{i:06d}.png"))
    assert result["miou"] == pytest.approx(summarize({"m": ours}, labels.num_classes).miou)
    assert "--model names a CoordGAN model" in _error("demo", tmp_path / "d2", "--matcher", "correlation",
                                                      "--model", "faces")
