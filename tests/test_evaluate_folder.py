"""``coordgan evaluate --dataset folder``: labelled folders of photos (images/, masks/, labels.json),
references by name, from another folder or leave-one-out, scored with issue 18's protocol — and
that protocol checked against ``benchmarks/realphoto.py`` on the same tiny inputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.data.benchmarks import load_benchmark
from coordgan_cli.errors import UserError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
LABELS = {"0": "background", "1": "body", "2": "left_light", "3": "right_light", "4": "roof"}
# Small and quick: two Inception layers at stride 8 on a 64² working grid.
SMALL = dict(layers=["conv_4", "mixed_2"], stride=8, work_size=64)


def scene(i: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A 'car': a body with a light at each side (left/right mirrored classes) and, on even images,
    a roof; colours jittered per image."""
    rng = np.random.default_rng(i)
    mask = np.zeros((h, w), np.uint8)
    y0, y1 = int(h * (0.3 + 0.05 * rng.random())), int(h * 0.85)
    x0, x1 = int(w * (0.1 + 0.05 * rng.random())), int(w * 0.9)
    mask[y0:y1, x0:x1] = 1
    mask[y0 + 2:y0 + 2 + h // 8, x0:x0 + w // 6] = 2
    mask[y0 + 2:y0 + 2 + h // 8, x1 - w // 6:x1] = 3
    if i % 2 == 0:
        mask[y0 - h // 8:y0, x0 + w // 4:x1 - w // 4] = 4
    colours = np.array([[200, 220, 240], [150, 30, 30], [250, 240, 120], [250, 200, 60], [40, 40, 40]])
    image = colours[mask] + rng.integers(-25, 25, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_folder(root: Path, sizes, start: int = 0, labels=None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps(labels or LABELS))
    for k, (h, w) in enumerate(sizes):
        image, mask = scene(start + k, h, w)
        Image.fromarray(image).save(root / "images" / f"im{k:02d}.jpg", quality=95)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{k:02d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("folders")
    train = make_folder(base / "train", [(48, 64), (56, 56), (40, 60)])
    test = make_folder(base / "test", [(44, 70), (64, 48), (52, 52), (36, 50)], start=10)
    return train, test


def load_realphoto():
    spec = importlib.util.spec_from_file_location("realphoto_bench", REPO / "benchmarks" / "realphoto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_args(**over):
    """benchmarks/realphoto.py's options (its own defaults) for a small run."""
    args = load_realphoto().parser().parse_args([])
    vars(args).update(over)
    return args


def core_matchers(kind_options: dict) -> dict:
    from coordgan_cli.labelling import make_matcher

    return {kind: make_matcher(kind, device="cpu", **SMALL, **opts) for kind, opts in kind_options.items()}


@pytest.mark.parametrize("layout", ["ref-root", "leave-one-out"])
def test_fullres_protocol_is_the_realphoto_benchmarks(folders, layout):
    """The evaluation core's fullres protocol on a labelled folder scores exactly what
    benchmarks/realphoto.py scores: per-class ΣI/ΣU over the whole query set, background excluded,
    the mean over the classes present in the queries (here roof is absent from some)."""
    from coordgan_cli.backbones import load_backbone
    from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder
    from coordgan_cli.data.folder import read_folder_dataset
    from coordgan_cli.evaluation.protocols import run_fullres

    rp = load_realphoto()
    train, test = folders
    torch.set_num_threads(1)
    encoder = HypercolumnEncoder(load_backbone("inception", layers=SMALL["layers"], stride=SMALL["stride"]),
                                 SMALL["work_size"])
    args = bench_args(steps=40, members=2, dims=16, hidden=16, fdims=16, k=4)
    options = {"features": dict(k=4, dims=16),
               "classifier": dict(members=2, dims=16, hidden=16, steps=40, seed=0)}
    if layout == "ref-root":
        bench = load_benchmark("folder", test, ref_root=train, num_refs=2)
        refs, queries = read_folder_dataset(train), read_folder_dataset(test)
        expected = {k: rp.run_set(k, encoder, args, refs, [0, 1], queries) for k in options}
    else:
        bench = load_benchmark("folder", test, leave_one_out=True)
        data = read_folder_dataset(test)
        folds = [([j for j in range(len(data)) if j != i], [i]) for i in range(len(data))]
        expected = {k: rp.run_set(k, encoder, args, data, [], data, folds=folds) for k in options}
    torch.manual_seed(0)
    result = run_fullres(bench, core_matchers(options))
    present = {c for c in range(1, 5) if any((np.asarray(Image.open(p)) == c).any()
                                               for p in sorted((test / "masks").glob("*.png")))}
    for kind in options:
        got = result.matchers[kind]
        assert set(got.classes) == present
        assert got.miou == pytest.approx(expected[kind]["miou"], abs=6e-5), kind
        names = {i: LABELS[str(i)] for i in present}
        assert {names[c]: round(v, 3) for c, v in got.per_class.items()} == expected[kind]["per_class"]
    assert result.baselines["identity"].miou == pytest.approx(expected["features"]["identity"], abs=6e-5)
    assert result.maps is None  # no CoordGAN maps: no coordinates column


def test_scoring_counts_only_classes_present_in_the_queries(tmp_path):
    """A class absent from every query's truth is left out of the mean (the paper's protocol
    would count it as 0)."""
    from coordgan_cli.evaluation.protocols import run_fullres

    root = make_folder(tmp_path / "d", [(32, 40)] * 4)  # images 0, 2 have a roof; 1, 3 not
    bench = load_benchmark("folder", root, refs=["im00"])
    bench.queries = [q for q in bench.queries if q.name in ("im01.jpg", "im03.jpg")]
    result = run_fullres(bench, {})
    assert result.baselines["identity"].classes == [1, 2, 3]
    bench.present_only = False
    assert run_fullres(bench, {}).baselines["identity"].classes == [1, 2, 3, 4]


def test_reference_choices(folders):
    train, test = folders
    default = load_benchmark("folder", train, num_refs=1)
    assert [r.name for r in default.references] == ["im00.jpg"]
    assert [q.name for q in default.queries] == ["im01.jpg", "im02.jpg"]
    named = load_benchmark("folder", train, refs=["im02"])
    assert [r.name for r in named.references] == ["im02.jpg"] and len(named.queries) == 2
    cross = load_benchmark("folder", test, ref_root=train, refs=["im01.jpg"], queries=2)
    assert [r.image for r in cross.references] == [train / "images" / "im01.jpg"]
    assert [q.name for q in cross.queries] == ["im00.jpg", "im01.jpg"]
    loo = load_benchmark("folder", test, leave_one_out=True)
    assert len(loo.folds) == 4 and all(len(r) == 3 and q[0] not in r for r, q in loo.folds)
    assert loo.class_names == ["background", "body", "left_light", "right_light", "roof"]


@pytest.mark.parametrize("options,message", [
    (dict(num_refs=3), r"--num-refs 3: .* has only 3 labelled images, none left to query"),
    (dict(num_refs=0), r"--num-refs must be at least 1"),
    (dict(leave_one_out=True, num_refs=2), r"--leave-one-out labels every image from all the others"),
    (dict(refs=["nope"]), r"--refs: nope not found"),
])
def test_reference_mistakes(folders, options, message):
    with pytest.raises(UserError, match=message):
        load_benchmark("folder", folders[0], **options)


def test_ref_root_with_other_labels_is_refused(folders, tmp_path):
    other = make_folder(tmp_path / "o", [(30, 30)], labels={"0": "background", "1": "wheel"})
    with pytest.raises(UserError, match=r"o/labels\.json: names other classes than"):
        load_benchmark("folder", folders[1], ref_root=other)


def test_cli_table_json_and_unavailable_coordinates(folders):
    """The CLI end to end: every photo column beside identity and cosine-NN, coordinates listed as
    unavailable (no model or store), fullres by default, --json with the usual keys."""
    train, test = folders
    args = ["evaluate", "--dataset", "folder", "--root", str(test), "--ref-root", str(train), "--num-refs", "2",
            "--matchers", "features", "--work-size", "128"]
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["protocol"] == "fullres" and rep["queries"] == 4 and rep["references"] == ["im00.jpg", "im01.jpg"]
    assert rep["matchers"]["coordinates"]["available"] is False
    assert "--store" in rep["matchers"]["coordinates"]["reason"]
    assert 0.0 <= rep["matchers"]["features"]["miou"] <= 1.0
    assert set(rep["baselines"]) == {"identity", "cosine_nn"}
    assert 0.0 <= rep["baselines"]["cosine_nn"]["miou"] <= 1.0
    assert rep["miou"] is None and set(rep["per_class"]) == set(rep["matchers"]["features"]["per_class"])
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    for word in ("features", "identity", "cosine_nn", "coordinates: unavailable", "mIoU features"):
        assert word in table.output


def test_cli_default_columns_on_photos(folders, monkeypatch):
    """Without --matchers a labelled folder gets the photo matchers (features, classifier) beside
    the always-listed ones; the correlation without a shipped matcher is listed as unavailable."""
    from coordgan_cli.evaluation.columns import ColumnInputs, build_columns

    inputs = ColumnInputs("fullres", None, "cpu", "soft", 0.01, no_correlation=True, photos=True)
    columns = build_columns(None, inputs)
    assert columns.order[:5] == ["coordinates", "correlation", "ensemble", "features", "classifier"]
    assert set(columns.matchers) >= {"features", "classifier"} and "coordinates" in columns.unavailable
    synthetic = ColumnInputs("fullres", None, "cpu", "soft", 0.01, no_correlation=True, photos=False)
    with pytest.raises(UserError, match="needs CoordGAN correspondence maps"):
        build_columns(None, synthetic)


@pytest.mark.parametrize("extra,message", [
    (["--backbone", "resnet50", "--backbone-weights", "{tmp}/r50.pth"],
     r"r50\.pth: backbone weights file not found; place the resnet50 weights there"),
    (["--backbone", "resnet50", "--matchers", "features"], r"backbone resnet50 needs a weights file"),
    (["--protocol", "paper"], r"--protocol paper scores the coordinate vote on CoordGAN maps"),
    (["--leave-one-out", "--dataset", "synthetic"], r"--leave-one-out: only for --dataset folder"),
])
def test_cli_mistakes_are_one_line(folders, tmp_path, extra, message):
    import re

    train, test = folders
    args = ["evaluate", "--dataset", "folder", "--root", str(test), "--ref-root", str(train), "--num-refs", "2"]
    result = runner.invoke(app, args + [e.replace("{tmp}", str(tmp_path)) for e in extra])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert "Traceback" not in result.output
