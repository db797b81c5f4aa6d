"""``coordgan propagate`` on photos: ``--matcher features|classifier|auto`` end to end on a folder
of JPEGs of mixed sizes (labels PNGs at each image's size, COCO, overlays, report), and the
``--backbone`` / ``--backbone-weights`` options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.io.masks import read_mask

runner = CliRunner()
RED, BLUE = (220, 30, 30), (30, 40, 220)
SIZES = {"a.jpg": (48, 80), "b.jpg": (90, 60), "sub/c.jpeg": (64, 64)}


def halves(h, w, left, right):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = left
    image[:, w // 2:] = right
    return image


def truth(h, w):
    mask = np.full((h, w), 1, np.uint8)
    mask[:, w // 2:] = 2
    return mask


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(halves(64, 72, RED, BLUE)).save(root / "ref.jpg", quality=95)
    Image.fromarray(truth(64, 72), mode="L").save(root / "ref_mask.png")
    (root / "labels.json").write_text(json.dumps({"0": "background", "1": "door", "2": "hood"}))
    for name, (h, w) in SIZES.items():
        (root / "q" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(halves(h, w, RED, BLUE)).save(root / "q" / name, quality=90)
    return root


def run(photos: Path, out: Path, *extra: str):
    return runner.invoke(app, ["--device", "cpu", "propagate", "--ref", str(photos / "ref.jpg"), "--mask",
                               str(photos / "ref_mask.png"), "--labels", str(photos / "labels.json"), "--queries",
                               str(photos / "q"), "--out", str(out), "--work-size", "96", "--json", *extra])


@pytest.mark.parametrize("matcher", ["features", "classifier", "auto"])
def test_photo_matchers_label_mixed_size_jpegs_end_to_end(photos, tmp_path, matcher):
    out = tmp_path / "out"
    result = run(photos, out, "--matcher", matcher)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["count"] == 3 and summary["matcher"] == ("features" if matcher == "auto" else matcher)
    if matcher == "auto":
        assert "--matcher auto: features (no CoordGAN maps or matcher given" in result.stderr
    coco = json.loads((out / "annotations.json").read_text())
    sizes = {img["file_name"]: (img["height"], img["width"]) for img in coco["images"]}
    assert {Path(n).name for n in sizes} == {Path(n).name for n in SIZES}
    assert {c["name"] for c in coco["categories"]} >= {"door", "hood"}
    for name, (h, w) in SIZES.items():
        labels = read_mask(out / "labels" / Path(name).with_suffix(".png"))
        assert labels.shape == (h, w) == next(v for k, v in sizes.items() if Path(k).name == Path(name).name)
        # Away from the colour edge every pixel gets its part (red → door, blue → hood).
        cols = np.r_[0: w // 2 - 12, w // 2 + 12: w]
        assert (labels[:, cols] == truth(h, w)[:, cols]).mean() > 0.9
        assert (out / "overlays" / Path(name).with_suffix(".png")).is_file() or \
            any((out / "overlays").rglob(Path(name).stem + ".*"))
    assert (out / "report.html").is_file() and (out / "labels.json").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--matcher", "features", "--backbone", "resnet18", "--backbone-weights", "{tmp}/r18.pth"],
     "{tmp}/r18.pth: backbone weights file not found; place the resnet18 weights there"),
    (["--matcher", "classifier", "--backbone", "resnet18"], "backbone resnet18 needs a weights file"),
    (["--matcher", "correlation", "--backbone", "resnet18"],
     "--backbone/--backbone-weights choose the backbone of --matcher features or classifier, not correlation"),
    (["--matcher", "features", "--backbone", "alexnet"], "unknown backbone 'alexnet'"),
])
def test_backbone_mistakes_are_one_line_and_leave_nothing(photos, tmp_path, extra, message):
    out = tmp_path / "out"
    result = run(photos, out, *[e.replace("{tmp}", str(tmp_path)) for e in extra])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.replace("{tmp}", str(tmp_path)) in errors[0], result.stderr
    assert not out.exists() and "Traceback" not in result.output


def test_user_backbone_weights_reach_the_matcher(photos, tmp_path):
    """--backbone resnet18 --backbone-weights FILE: the file is loaded (a random-weights resnet18
    state dict written here) and the run completes."""
    import torch
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    result = run(photos, tmp_path / "out", "--matcher", "features", "--backbone", "resnet18",
                 "--backbone-weights", str(weights))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["count"] == 3


def test_auto_rule():
    from coordgan_cli.cli.propagate import auto_matcher

    assert auto_matcher(Path("m.h5"), None, None, None)[0] == "coordinates"
    assert auto_matcher(None, None, "faces", Path("m.pt"))[0] == "ensemble"
    assert auto_matcher(None, None, None, Path("m.pt"))[0] == "correlation"
    assert auto_matcher(None, None, None, None)[0] == "features"
