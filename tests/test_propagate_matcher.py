"""``coordgan propagate --matcher correlation|ensemble``: end to end, the ensemble against a hand
fusion of the two votes, determinism, resume guard, errors, the shipped-matcher hook."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import MatcherConfig, Recipe
from coordgan_cli.correspondence.correlation import (correlation_probabilities, prepare_correlation_references,
                                                     propagate_correlation)
from coordgan_cli.correspondence.ensemble import ENSEMBLE_TOL, coordinate_probabilities, fuse_probabilities
from coordgan_cli.correspondence.vote import map_to_points, prepare_references, reference_points, vote
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import save_checkpoint
from coordgan_cli.io.images import read_image, write_image
from coordgan_cli.io.masks import labels_from_names, read_mask, write_labels, write_mask
from coordgan_cli.io.store import StoreReader, StoreWriter
from coordgan_cli.training.matcher import load_matcher

from test_vote import parts_mask, smooth_warp
from tiny_checkpoints import make_matcher_checkpoint

LABELS = labels_from_names(["background", "face", "hair", "left_eye", "right_eye"])
SIZE = 24
CONFIG = MatcherConfig(channels=8, width=4, depth=1, k=32)


def _image(cmap: np.ndarray, seed: int) -> np.ndarray:
    """Colours follow the canonical coordinates, with a little seeded noise."""
    x, y = cmap
    rgb = np.stack([(x + 1) * 110, (y + 1) * 110, parts_mask(cmap) * 50.0], axis=-1)
    rgb += np.random.default_rng(seed).normal(0, 4, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """24² images a, b, c with a ground-truth store, and a 32² image d outside the store."""
    root = tmp_path / "set"
    write_labels(root / "labels.json", LABELS)
    with StoreWriter(root / "maps.h5", size=(SIZE, SIZE), source="ground-truth", with_valid=True) as store:
        for seed, name in enumerate(["a.png", "b.png", "c.png"]):
            cmap = smooth_warp(SIZE, seed)
            store.append(name, cmap, valid=np.ones((SIZE, SIZE), bool))
            write_image(root / "images" / name, _image(cmap, seed))
            write_mask(root / "masks" / name, parts_mask(cmap), LABELS)
    write_image(root / "other" / "d.png", _image(smooth_warp(32, 7), 7))
    write_image(root / "other" / "b.png", read_image(root / "images" / "b.png"))
    return root


def save_matcher(path: Path, seed: int = 0) -> Path:
    """A random-weight matcher saved the way ``train_matcher`` saves ``latest.pt``."""
    return make_matcher_checkpoint(path, seed, CONFIG)


@pytest.fixture()
def matcher_ckpt(tmp_path: Path) -> Path:
    return save_matcher(tmp_path / "matcher.pt")


def _run(*args):
    return CliRunner().invoke(app, ["--quiet", "--device", "cpu", "propagate", *map(str, args)])


def _summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _ref(dataset: Path) -> list:
    return ["--ref", dataset / "images/a.png", "--mask", dataset / "masks/a.png"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools (NumPy 2 copy keyword)
def test_correlation_end_to_end(dataset: Path, matcher_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*_ref(dataset), "--queries", dataset / "other", "--out", out, "--matcher", "correlation",
            "--matcher-ckpt", matcher_ckpt, "--json"]
    summary = _summary(_run(*args))
    assert summary["count"] == 2 and summary["skipped"] == [] and summary["matcher"] == "correlation"
    assert 0.0 < summary["mean_confidence"] <= 1.0
    # Labels at each query's own size, equal to the library's correlation transfer.
    network, cfg = load_matcher(matcher_ckpt)
    ref = (read_image(dataset / "images/a.png"), read_mask(dataset / "masks/a.png"))
    for name, size in [("d", 32), ("b", SIZE)]:
        pred = read_mask(out / "labels" / f"{name}.png")
        assert pred.shape == (size, size)
        expected, _ = propagate_correlation(read_image(dataset / "other" / f"{name}.png"), [ref], network,
                                            LABELS.num_classes, tau=cfg.tau, k=cfg.k, patch=cfg.patch)
        np.testing.assert_array_equal(pred, expected)
        assert (out / "overlays" / f"{name}.jpg").is_file() and (out / "confidence" / f"{name}.png").is_file()
    # COCO loads and decodes to exactly the PNGs.
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.dataset["images"]) == 2
    for img in coco.dataset["images"]:
        decoded = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            decoded[coco.annToMask(ann) > 0] = ann["category_id"]
        np.testing.assert_array_equal(decoded, read_mask(out / "labels" / img["file_name"]))
    assert json.loads((out / "labels.json").read_text())["labels"][1]["name"] == "face"
    assert "correlation" in (out / "report.html").read_text()
    assert not list(out.rglob(".*.tmp*"))

    # Resume skips everything; another matcher (weights or kind) in the same folder is refused.
    assert _summary(_run(*args))["resumed"] == 2
    other = _run(*[a if a != matcher_ckpt else save_matcher(tmp_path / "m2.pt", seed=1) for a in args])
    assert other.exit_code == 2 and "other references or settings" in other.stderr
    mixed = _run(*_ref(dataset), "--queries", dataset / "other", "--out", out, "--store", dataset / "maps.h5")
    assert mixed.exit_code == 2 and "other references or settings" in mixed.stderr


def test_ensemble_is_argmax_of_averaged_probabilities(dataset: Path, matcher_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = _summary(_run("--store", dataset / "maps.h5", *_ref(dataset), "--ref", dataset / "images/c.png",
                            "--mask", dataset / "masks/c.png", "--queries", dataset / "images", "--out", out,
                            "--matcher", "ensemble", "--matcher-ckpt", matcher_ckpt, "--json"))
    assert summary["count"] == 3 and summary["matcher"] == "ensemble"
    network, cfg = load_matcher(matcher_ckpt)
    refs = [(read_image(dataset / f"images/{n}.png"), read_mask(dataset / f"masks/{n}.png")) for n in "ac"]
    prepared_corr = prepare_correlation_references(refs, network, LABELS.num_classes, patch=cfg.patch)
    c = LABELS.num_classes
    with StoreReader(dataset / "maps.h5") as store, h5py.File(out / "labels.h5", "r") as written:
        written_row = {n.decode(): i for i, n in enumerate(written["names"][:])}
        ref_points = [reference_points(store.correspondence(store.index(f"{n}.png")), m) for n, (_, m) in
                      zip("ac", refs)]
        changed = 0
        tau = summary["tau"]  # the default: the paper's 0.01 scaled to the references' side
        assert tau == 0.01 * 128 / SIZE
        for name in ["a.png", "b.png", "c.png"]:
            row = store.index(name)
            # By hand: the coordinate vote's class shares (NumPy vote) and the correlation's warped one-hot.
            coord = vote(map_to_points(store.correspondence(row)), ref_points, c, tau=tau, tol=ENSEMBLE_TOL,
                         return_probabilities=True).probabilities.T.reshape(c, SIZE, SIZE)
            corr = correlation_probabilities(read_image(dataset / "images" / name), prepared_corr, network,
                                             tau=cfg.tau, k=cfg.k, patch=cfg.patch).numpy()
            mean = (coord + corr) / 2
            pred = read_mask(out / "labels" / name)
            np.testing.assert_array_equal(pred, mean.argmax(axis=0))
            np.testing.assert_allclose(written["confidence"][written_row[name]], mean.max(axis=0), atol=1e-3)
            changed += int((pred != coord.argmax(axis=0)).sum())
            # The ensemble is a real fusion: not the coordinate vote alone, not the correlation alone.
            assert (pred == parts_mask(store.correspondence(row))).mean() > 0.8
        assert changed > 0


def test_fuse_probabilities_and_coordinate_probabilities() -> None:
    a = np.zeros((3, 2, 2), np.float32)
    a[0] = 0.6
    a[1] = 0.4
    b = np.zeros_like(a)
    b[1] = 0.7
    b[2] = 0.3
    labels, confidence, mean = fuse_probabilities(a, b)
    np.testing.assert_array_equal(labels, np.ones((2, 2)))
    np.testing.assert_allclose(confidence, 0.55)
    np.testing.assert_allclose(mean.sum(axis=0), 1.0)
    with pytest.raises(ValueError):
        fuse_probabilities(a, b[:2])
    # coordinate_probabilities agrees with the vote's labels; invalid query pixels are background.
    qmap, rmap = smooth_warp(16, 1), smooth_warp(16, 2)
    prepared = prepare_references([reference_points(rmap, parts_mask(rmap))], 5, 0.01)
    valid = np.ones((16, 16), bool)
    valid[:, :3] = False
    probs, _ = coordinate_probabilities(qmap, prepared, 5, query_valid=valid)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs[0][~valid] == 1).all()
    full = vote(map_to_points(qmap)[valid.reshape(-1)], prepared, 5, tol=ENSEMBLE_TOL)
    np.testing.assert_array_equal(probs.argmax(axis=0)[valid], full.labels)


def test_correlation_on_coordinate_features_recovers_parts() -> None:
    """A 'matcher' whose features are a one-hot of the canonical-coordinate cell (read back from
    the image colours) makes the correlation a nearest-cell vote: labels follow the true parts."""

    class CoordinateOneHot(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            # _image paints x, y as (c + 1) * 110 in R, G; images arrive in [-1, 1].
            xy = ((images[:, :2] + 1) * 127.5 / 110 - 1).clamp(-1, 1)
            cell = ((xy + 1) / 2 * 11.999).floor().long()  # 12 × 12 cells
            index = cell[:, 1] * 12 + cell[:, 0]
            return torch.nn.functional.one_hot(index, 144).permute(0, 3, 1, 2).float()

    ref_map, query_map = smooth_warp(32, 3), smooth_warp(32, 4)
    noiseless = lambda m: np.clip(np.stack([(m[0] + 1) * 110, (m[1] + 1) * 110, 0 * m[0]], -1), 0, 255).astype(np.uint8)  # noqa: E731
    labels, confidence = propagate_correlation(noiseless(query_map), [(noiseless(ref_map), parts_mask(ref_map))],
                                               CoordinateOneHot(), 5, tau=0.01, k=64)
    assert (labels == parts_mask(query_map)).mean() > 0.9
    assert confidence.shape == (32, 32) and confidence.min() > 0


def test_deterministic(dataset: Path, matcher_ckpt: Path, tmp_path: Path) -> None:
    for matcher in ("correlation", "ensemble"):
        outs = [tmp_path / f"{matcher}{i}" for i in range(2)]
        maps = ["--store", dataset / "maps.h5"] if matcher == "ensemble" else []
        summaries = [_summary(_run(*maps, *_ref(dataset), "--queries", dataset / "images", "--out", o,
                                   "--matcher", matcher, "--matcher-ckpt", matcher_ckpt, "--json")) for o in outs]
        assert summaries[0]["mean_confidence"] == summaries[1]["mean_confidence"]
        for name in ["a.png", "b.png", "c.png"]:
            np.testing.assert_array_equal(read_mask(outs[0] / "labels" / name), read_mask(outs[1] / "labels" / name))
        assert (outs[0] / "annotations.json").read_bytes() == (outs[1] / "annotations.json").read_bytes()


def test_errors(dataset: Path, matcher_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import coordgan_cli.inference as inference

    # "pass --matcher-ckpt" is the message of a build without the shipped default matcher.
    monkeypatch.setattr(inference, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    base = [*_ref(dataset), "--queries", dataset / "images", "--out", tmp_path / "out"]

    def error(*args) -> str:
        res = _run(*base, *args)
        assert res.exit_code == 2, res.output
        return res.stderr

    assert "pass --matcher-ckpt" in error("--matcher", "correlation")
    assert "pass --matcher-ckpt" in error("--store", dataset / "maps.h5", "--matcher", "ensemble")
    assert "--matcher must be one of" in error("--matcher", "dense")
    assert "not coordinates" in error("--store", dataset / "maps.h5", "--matcher-ckpt", matcher_ckpt)
    assert "drop --store" in error("--store", dataset / "maps.h5", "--matcher", "correlation",
                                   "--matcher-ckpt", matcher_ckpt)
    assert "--mode applies" in error("--matcher", "correlation", "--matcher-ckpt", matcher_ckpt, "--mode", "hard")
    kp = tmp_path / "kp.json"
    kp.write_text("{}")
    assert "--ref-keypoints" in error("--matcher", "correlation", "--matcher-ckpt", matcher_ckpt,
                                      "--ref-keypoints", kp)
    assert "no correspondence maps" in error("--matcher", "ensemble", "--matcher-ckpt", matcher_ckpt)
    assert "checkpoint not found" in error("--matcher", "correlation", "--matcher-ckpt", tmp_path / "nope.pt")
    encoder = tmp_path / "encoder.pt"
    save_checkpoint(encoder, {"kind": "encoder", "step": 0, "config": Recipe().to_json(), "networks": {}})
    assert "not a matcher" in error("--matcher", "correlation", "--matcher-ckpt", encoder)
    assert not (tmp_path / "out").exists()  # every mistake is caught before any output


def test_resolve_matcher_shipped_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import coordgan_cli.inference as inference

    monkeypatch.setattr(inference, "SHIPPED_DIR", tmp_path / "shipped")
    with pytest.raises(UserError, match="pass --matcher-ckpt"):
        inference.resolve_matcher(None)
    assert inference.resolve_matcher(tmp_path / "m.pt") == tmp_path / "m.pt"
    shipped = save_matcher(tmp_path / "shipped" / f"{inference.DEFAULT_MATCHER}.pt")
    assert inference.resolve_matcher(None) == shipped
    assert inference.resolve_matcher(None, inference.DEFAULT_MATCHER) == shipped
    with pytest.raises(UserError, match="not shipped"):
        inference.resolve_matcher(None, "no-such-matcher")


def test_correlation_shows_progress_lines_in_a_pipe(dataset: Path, matcher_ckpt: Path, tmp_path: Path) -> None:
    """Not a terminal (CliRunner, like a pipe or a log file): plain lines for the references'
    features and for the queries, each ending with its final count."""
    result = CliRunner().invoke(app, ["--device", "cpu", "propagate", *map(str, [
        *_ref(dataset), "--ref", dataset / "images/b.png", "--mask", dataset / "masks/b.png", "--queries",
        dataset / "other", "--out", tmp_path / "out", "--matcher", "correlation", "--matcher-ckpt", matcher_ckpt])])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    references = [line for line in lines if line.startswith("[references] ")]
    queries = [line for line in lines if line.startswith("[propagate] ")]
    assert references and references[-1].startswith("[references] 2/2 img (100 %)")
    assert queries and queries[-1].startswith("[propagate] 2/2 img (100 %)")
    assert lines.index(references[-1]) < lines.index(queries[0])
    quiet = CliRunner().invoke(app, ["--quiet", "--device", "cpu", "propagate", *map(str, [
        *_ref(dataset), "--queries", dataset / "other", "--out", tmp_path / "q", "--matcher", "correlation",
        "--matcher-ckpt", matcher_ckpt])])
    assert quiet.exit_code == 0 and "[references]" not in quiet.stderr and "[propagate]" not in quiet.stderr
