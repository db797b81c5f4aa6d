"""Correlation at a working resolution: the matcher sees work-size tensors, labels come back at the
query's own size, references are encoded once per run, and ``--work-size`` end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import Recipe
from coordgan_cli.correspondence.correlation import (correlation_probabilities, prepare_correlation_references,
                                                     propagate_correlation, work_shape)
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import save_checkpoint
from coordgan_cli.io.images import read_image, write_image
from coordgan_cli.io.masks import read_mask
from coordgan_cli.metrics.protocol import FeatureCorrelation
from coordgan_cli.training.matcher import build_matcher, load_matcher, matcher_work_size

from test_correlation import _PositionMatcher
from test_propagate_matcher import LABELS, dataset, save_matcher  # noqa: F401  (dataset is a fixture)
from tiny_checkpoints import TINY_MATCHER


class _Recording(torch.nn.Module):
    """Wraps a matcher and records the (H, W) of every batch it is given."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(images.shape[-2:]))
        return self.inner(images)


def test_work_shape_keeps_aspect_with_the_shorter_side_at_work_size():
    assert work_shape((600, 800), 64) == (64, 85)
    assert work_shape((61, 97), 16) == (16, 25)
    assert work_shape((20, 10), 40) == (80, 40)  # small images are enlarged to the working size
    assert work_shape((61, 97), None) == work_shape((61, 97), 0) == (61, 97)
    with pytest.raises(ValueError, match="work_size"):
        work_shape((8, 8), -1)


def test_matcher_sees_work_size_and_labels_come_back_at_odd_query_size(device):
    ref_image = np.zeros((40, 50, 3), np.uint8)
    ref_mask = np.zeros((40, 50), np.uint8)
    ref_mask[:, 25:] = 1
    ref_mask[30:, :] = 2
    ref_mask[:4, :4] = 255
    query = np.random.default_rng(0).integers(0, 256, (61, 97, 3), dtype=np.uint8)
    matcher = _Recording(_PositionMatcher())
    prepared = prepare_correlation_references([(ref_image, ref_mask)], matcher, 3, device=device, work_size=16)
    probabilities = correlation_probabilities(query, prepared, matcher, tau=0.01, k=8, device=device, work_size=16)
    assert matcher.sizes == [work_shape((40, 50), 16), work_shape((61, 97), 16)] == [(16, 20), (16, 25)]
    # Reference positions at the work size: the 4² ignore corner covers the first 16×20 position
    # wholly (left out) and its neighbours partly (less label mass); the rest carry mass 1.
    assert prepared.features.shape[1] == 16 * 20 - 1
    mass = prepared.onehot.sum(dim=0).cpu()
    assert 0 < mass[0] < 1 and torch.allclose(mass[40:], torch.ones(1))
    assert probabilities.shape == (3, 61, 97) and probabilities.device.type == torch.device(device).type
    np.testing.assert_allclose(probabilities.sum(dim=0).cpu().numpy(), 1.0, atol=1e-5)
    labels, confidence = propagate_correlation(query, [(ref_image, ref_mask)], _PositionMatcher(), 3, tau=0.01, k=8,
                                               device=device, work_size=16)
    assert labels.shape == confidence.shape == (61, 97) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probabilities.argmax(dim=0).cpu().numpy())


def test_labels_at_a_work_size_follow_the_reference_layout(device):
    """The position matcher maps each pixel to the same relative place: matching at 8² and carrying
    back to 64² gives the reference's (scaled) layout away from its borders."""
    ref_mask = np.zeros((16, 16), np.uint8)
    ref_mask[:, 8:] = 1
    ref_mask[12:, :] = 2
    labels, _ = propagate_correlation(np.zeros((64, 64, 3), np.uint8), [(np.zeros((16, 16, 3), np.uint8), ref_mask)],
                                      _PositionMatcher(), 3, tau=0.01, k=8, device=device, work_size=8)
    expected = np.kron(ref_mask, np.ones((4, 4), np.uint8))
    interior = np.ones((64, 64), bool)
    interior[:, 24:40] = interior[40:56, :] = False
    assert (labels[interior] == expected[interior]).all()


def test_matcher_work_size_resolution(tmp_path: Path):
    cfg = TINY_MATCHER
    torch.manual_seed(0)
    state = build_matcher(cfg).state_dict()
    sized = save_checkpoint(tmp_path / "sized.pt", {
        "kind": "matcher", "step": 0, "config": Recipe(matcher=cfg).to_json(), "networks": {"matcher": state},
        "optimizers": {}, "extra": {"seed": 0, "source": {"kind": "store", "size": [48, 40]}}})
    unsized = save_matcher(tmp_path / "unsized.pt")
    assert matcher_work_size(sized, cfg) == 40  # the training pairs' shorter side
    assert matcher_work_size(unsized, cfg) is None  # nothing recorded: the images' own sizes
    assert matcher_work_size(sized, dataclasses.replace(cfg, work_size=24)) == 24  # the recipe field
    assert matcher_work_size(sized, cfg, 32) == 32
    assert matcher_work_size(sized, cfg, 0) is None
    with pytest.raises(UserError, match="--work-size must be"):
        matcher_work_size(sized, cfg, -4)


def _run(*args):
    return CliRunner().invoke(app, ["--quiet", "--device", "cpu", "propagate", *map(str, args)])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools (NumPy 2 copy keyword)
def test_cli_work_size_end_to_end(dataset: Path, tmp_path: Path,  # noqa: F811
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import coordgan_cli.training.matcher as training_matcher

    ckpt = save_matcher(tmp_path / "matcher.pt")
    seen: list[_Recording] = []

    def recording_load(path, device="cpu"):
        network, cfg = load_matcher(path, device)
        seen.append(_Recording(network))
        return seen[-1], cfg

    monkeypatch.setattr(training_matcher, "load_matcher", recording_load)
    out = tmp_path / "out"
    args = ["--ref", dataset / "images/a.png", "--mask", dataset / "masks/a.png", "--queries", dataset / "other",
            "--out", out, "--matcher", "correlation", "--matcher-ckpt", ckpt, "--work-size", 12, "--json"]
    res = _run(*args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 2
    # One reference encoded once, then each of the two queries once — all at the working size.
    assert seen[0].sizes == [(12, 12)] * 3
    network, cfg = load_matcher(ckpt)
    ref = (read_image(dataset / "images/a.png"), read_mask(dataset / "masks/a.png"))
    for name, size in [("d", 32), ("b", 24)]:
        pred = read_mask(out / "labels" / f"{name}.png")
        assert pred.shape == (size, size)
        expected, _ = propagate_correlation(read_image(dataset / "other" / f"{name}.png"), [ref], network,
                                            LABELS.num_classes, tau=cfg.tau, k=cfg.k, patch=cfg.patch, work_size=12)
        np.testing.assert_array_equal(pred, expected)
    # Another working size makes other labels: resuming into the same folder is refused.
    other = _run(*[a if a != 12 else 16 for a in args])
    assert other.exit_code == 2 and "other references or settings" in other.stderr
    # --work-size 0: the images' own sizes (the matcher sees 24² and 32²).
    native = _run(*[a if a != 12 else 0 for a in args[:-7]], "--out", tmp_path / "native", "--matcher",
                  "correlation", "--matcher-ckpt", ckpt, "--work-size", 0, "--json")
    assert native.exit_code == 0, native.output
    assert sorted(seen[-1].sizes) == [(24, 24), (24, 24), (32, 32)]
    bad = _run(*args[:-7], "--out", tmp_path / "bad", "--matcher", "correlation", "--matcher-ckpt", ckpt,
               "--work-size", -3)
    assert bad.exit_code == 2 and "--work-size must be" in bad.stderr
    coords = _run(*args[:-7], "--out", tmp_path / "coords", "--store", dataset / "maps.h5", "--work-size", 12)
    assert coords.exit_code == 2 and "--work-size sets the feature matcher" in coords.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "coords").exists()


def test_feature_correlation_protocol_at_a_work_size(device):
    ref = np.zeros((30, 30, 3), np.uint8)
    labels = np.zeros((2, 30, 30), np.float32)
    labels[0, :, :15] = 1
    labels[1, :, 15:] = 1
    matcher = _Recording(_PositionMatcher())
    corr = FeatureCorrelation(matcher, tau=0.01, k=8, patch=False, device=device, work_size=10)
    prepared = corr.prepare([(ref, labels)])
    query = np.zeros((45, 60, 3), np.uint8)
    probabilities = corr.probabilities(query, prepared)
    assert matcher.sizes == [(10, 10), (10, 13)]
    assert probabilities.shape == (2, 45, 60)
    pred = probabilities.argmax(axis=0)
    assert (pred[:, :25] == 0).all() and (pred[:, 35:] == 1).all()
    # Precomputed features with the image to carry back to give the same result.
    np.testing.assert_allclose(corr.probabilities(corr.features(query), prepared, image=query), probabilities,
                               atol=1e-6)
