"""The evaluation core (``coordgan_cli.evaluation``): a registered labelling matcher is a column of
``coordgan evaluate``, scored exactly as a straightforward recomputation says; ``--matchers``
chooses columns; a dataset layout is one loader; the Python call gives the CLI's report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordgan_cli.cli import app  # noqa: E402
from coordgan_cli.data import benchmarks  # noqa: E402
from coordgan_cli.data.benchmarks import load_benchmark, register_dataset  # noqa: E402
from coordgan_cli.errors import UserError  # noqa: E402
from coordgan_cli.evaluation import EvaluationRequest, evaluate_benchmark  # noqa: E402
from coordgan_cli.labelling import MatcherBase, register_matcher  # noqa: E402
from coordgan_cli.labelling import matchers as matchers_module  # noqa: E402
from coordgan_cli.metrics.iou import IGNORE, IoUAccumulator, summarize  # noqa: E402
from coordgan_cli.metrics.protocol import hard_labels, resize_image, soft_one_hot  # noqa: E402

from test_evaluate import make_synthetic  # noqa: E402

runner = CliRunner()


def nearest(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Index of the closest colour (squared distance) for each (N, 3) pixel, in row chunks."""
    cc = (colours ** 2).sum(1)
    return np.concatenate([(cc[None] - 2 * chunk @ colours.T).argmin(1) for chunk in np.array_split(pixels, 16)])


class NearestColour(MatcherBase):
    """Each query pixel takes the label of the reference pixel of the closest colour (a real,
    if weak, matcher); records what it was built and fitted with."""

    name = "nearest-colour"

    def __init__(self, device=None, store: Optional[Path] = None) -> None:
        self.device, self.store, self.fits = device, store, 0

    def fit(self, references) -> None:
        super().fit(references)
        self.fits += 1
        keep = np.concatenate([(m != IGNORE).reshape(-1) for m in references.masks])
        self.colours = np.concatenate([i.reshape(-1, 3) for i in references.images]).astype(np.float32)[keep]
        self.labels = np.concatenate([m.reshape(-1) for m in references.masks])[keep]

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None):
        pixels = image.reshape(-1, 3).astype(np.float32)
        probs = np.eye(self.references.num_classes, dtype=np.float32)[self.labels[nearest(pixels, self.colours)]]
        probs = probs.T.reshape(-1, *image.shape[:2])
        return probs, probs.max(0)


def _expected_fullres(bench) -> float:
    """The nearest-colour column's fullres mIoU, recomputed without the evaluation core."""
    from coordgan_cli.io.images import read_image

    masks = [bench.read_mask(r) for r in bench.references]
    colours = np.concatenate([resize_image(read_image(r.image), m.shape).reshape(-1, 3)
                              for r, m in zip(bench.references, masks)]).astype(np.float32)
    labels = np.concatenate([m.reshape(-1) for m in masks])
    acc = IoUAccumulator(bench.num_classes)
    for q in bench.queries:
        truth = bench.read_mask(q)
        pixels = resize_image(read_image(q.image), truth.shape).reshape(-1, 3).astype(np.float32)
        pred = labels[nearest(pixels, colours)].reshape(truth.shape)
        acc.update(pred.astype(np.uint8), truth)
    return summarize({"all": acc}, bench.num_classes, bench.exclude).miou


def _expected_paper(bench, size: int = 128) -> float:
    """Its paper-protocol mIoU: each reference alone at 128², ΣI/ΣU per reference, averaged."""
    from coordgan_cli.io.images import read_image

    c, hw, accs = bench.num_classes, (size, size), {}
    for r in bench.references:
        colours = resize_image(read_image(r.image), hw).reshape(-1, 3).astype(np.float32)
        labels = hard_labels(soft_one_hot(bench.read_mask(r), c, hw)).reshape(-1)
        colours, labels = colours[labels != IGNORE], labels[labels != IGNORE]
        acc = accs[r.name] = IoUAccumulator(c)
        for q in bench.queries:
            truth = hard_labels(soft_one_hot(bench.read_mask(q), c, hw))
            pixels = resize_image(read_image(q.image), hw).reshape(-1, 3).astype(np.float32)
            acc.update(labels[nearest(pixels, colours)].reshape(hw).astype(np.uint8), truth)
    return summarize(accs, c, bench.exclude).miou


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(matchers_module, "_FACTORIES", dict(matchers_module._FACTORIES))
    monkeypatch.setattr(benchmarks, "_LOADERS", dict(benchmarks._LOADERS))
    built: list[NearestColour] = []

    def factory(device=None, store=None):
        built.append(NearestColour(device, store))
        return built[-1]

    register_matcher("nearest-colour", factory)
    return built


def _json(result) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


@pytest.mark.parametrize("protocol", ["fullres", "paper"])
def test_a_registered_matcher_is_a_column_scored_like_a_straightforward_recomputation(tmp_path, registry, protocol):
    root = make_synthetic(tmp_path / "syn", count=4, size=16)
    args = ["--device", "cpu", "evaluate", "--dataset", "synthetic", "--root", str(root), "--store",
            str(root / "correspondence.h5"), "--refs", "000000,000001", "--queries", "2", "--protocol", protocol,
            "--no-correlation", "--json", "--out", str(tmp_path / "res")]
    rep = _json(runner.invoke(app, args))
    assert list(rep["matchers"]) == ["coordinates", "correlation", "ensemble", "nearest-colour"]
    bench = load_benchmark("synthetic", root, refs=["000000", "000001"], queries=2)
    expected = _expected_fullres(bench) if protocol == "fullres" else _expected_paper(bench)
    assert rep["matchers"]["nearest-colour"]["miou"] == pytest.approx(expected, abs=1e-12)
    assert 0.2 < expected <= 1.0
    # It was built with the inputs its factory takes, and fitted once per reference set.
    assert str(registry[0].device) == "cpu" and registry[0].store == root / "correspondence.h5"
    assert registry[0].fits == (1 if protocol == "fullres" else 2)
    header = (tmp_path / "res" / "results.csv").read_text().splitlines()[0]
    assert header == "class,coordinates,correlation,ensemble,nearest-colour,identity,cosine_nn"


def test_matchers_option_chooses_the_columns(tmp_path, registry):
    root = make_synthetic(tmp_path / "syn", count=3, size=16)
    base = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store", str(root / "correspondence.h5"),
            "--refs", "000000", "--queries", "1", "--protocol", "fullres", "--json"]
    rep = _json(runner.invoke(app, base + ["--matchers", "nearest-colour"]))
    assert list(rep["matchers"]) == ["coordinates", "nearest-colour"]  # coordinates is always the main result
    assert rep["feature_matcher"]["available"] is False
    rep = _json(runner.invoke(app, base + ["--matchers", "coordinates,correlation", "--no-correlation"]))
    assert list(rep["matchers"]) == ["coordinates", "correlation"]
    assert rep["matchers"]["correlation"] == {"available": False, "reason": "skipped (--no-correlation)"}
    r = runner.invoke(app, base + ["--matchers", "coordinates,nearest-color"])
    assert r.exit_code == 2 and "--matchers: unknown nearest-color" in r.stderr and "nearest-colour" in r.stderr


def test_a_dataset_layout_is_one_loader(tmp_path, registry):
    root = make_synthetic(tmp_path / "syn", count=3, size=16)
    seen = {}

    def flat(root: Path, *, refs, queries, num_refs: int = 1):
        seen["num_refs"] = num_refs
        bench = benchmarks._load_synthetic(root, refs=None, queries=None)
        ordered = bench.references + bench.queries
        bench.references, bench.queries = ordered[:num_refs], ordered[num_refs:]
        bench.dataset, bench.choice = "flat", f"the first {num_refs} by name"
        return bench

    register_dataset("flat", flat)
    request = EvaluationRequest("flat", root, store=root / "correspondence.h5", protocol="fullres",
                                matchers=["coordinates"], dataset_options={"num_refs": 2}, swap_pairs=0)
    report = evaluate_benchmark(request)
    assert seen == {"num_refs": 2} and report["dataset"] == "flat"
    assert report["references"] == ["000000.png", "000001.png"] and report["queries"] == 1
    r = runner.invoke(app, ["evaluate", "--dataset", "nope", "--root", str(root)])
    assert r.exit_code == 2 and "flat" in r.stderr and "synthetic" in r.stderr


def test_python_call_gives_the_commands_report(tmp_path):
    root = make_synthetic(tmp_path / "syn", count=3, size=16)
    store = root / "correspondence.h5"
    cli = _json(runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store", str(store),
                                    "--refs", "000000", "--queries", "2", "--vote", "hard", "--no-correlation",
                                    "--json"]))
    report = evaluate_benchmark(EvaluationRequest("synthetic", root, store=store, refs=["000000"], queries=2,
                                                  vote="hard", no_correlation=True))
    assert json.loads(json.dumps(report)) == cli
    with pytest.raises(UserError, match="--tau must be positive"):
        evaluate_benchmark(EvaluationRequest("synthetic", root, store=store, tau=0.0))
    with pytest.raises(UserError, match="no correspondence maps: give --ckpt"):
        evaluate_benchmark(EvaluationRequest("synthetic", root))
