"""The public Python API (``coordgan_cli.labelling``): the README's examples run as written,
``Matcher.predict`` on one in-memory image (NumPy and PIL), a custom matcher registered and used
through ``label_folder`` and the CLI, ``References`` validation, and lazy imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.correspondence.correlation import propagate_correlation
from coordgan_cli.errors import UserError
from coordgan_cli.io.images import read_image
from coordgan_cli.io.masks import read_labels, read_mask
from coordgan_cli.labelling import (Matcher, MatcherBase, References, available_matchers, label_folder,
                                    make_matcher, register_matcher)
from coordgan_cli.labelling import matchers as matchers_module
from coordgan_cli.training.matcher import load_matcher

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert found, f"README block {marker} not found"
    return found.group(1)


@pytest.fixture()
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README's set: `coordgan synth faces --category faces --count 4 --size 32`, cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--quiet", "synth", "faces", "--category", "faces", "--count", "4",
                                      "--size", "32"])
    assert result.exit_code == 0, result.output
    return tmp_path / "faces"


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch):
    """Registrations made by a test are undone after it."""
    monkeypatch.setattr(matchers_module, "_FACTORIES", dict(matchers_module._FACTORIES))


def test_readme_examples_run(faces: Path, tmp_path: Path, registry, capsys: pytest.CaptureFixture) -> None:
    namespace: dict = {}
    exec(compile(_readme_block("api-example"), "README.md", "exec"), namespace)
    assert namespace["summary"]["count"] == 4 and len(list((tmp_path / "labelled" / "labels").glob("*.png"))) == 4
    labels, confidence = namespace["labels"], namespace["confidence"]
    # The in-memory prediction is the file label_folder wrote for the same image.
    np.testing.assert_array_equal(labels, read_mask(tmp_path / "labelled" / "labels" / "000001.png"))
    assert confidence.shape == (32, 32) and confidence.dtype == np.float32
    assert "4 images labelled" in capsys.readouterr().out
    exec(compile(_readme_block("api-matcher"), "README.md", "exec"), namespace)
    assert "mean-colour" in available_matchers()
    assert namespace["summary"]["matcher"] == "mean-colour" and namespace["summary"]["count"] == 4
    # The reference labels itself nearly exactly by its own class colours.
    own = read_mask(tmp_path / "labelled-mean-colour" / "labels" / "000000.png")
    assert (own == read_mask(faces / "masks" / "000000.png")).mean() > 0.5


def test_predict_numpy_and_pil_equal_the_correlation_transfer(faces: Path) -> None:
    refs = References.from_pairs([(faces / "images/000000.png", faces / "masks/000000.png")])
    matcher = make_matcher("correlation")
    assert isinstance(matcher, Matcher) and matcher.name == "correlation"
    with pytest.raises(RuntimeError, match="fit"):
        matcher.predict(np.zeros((8, 8, 3), np.uint8))
    matcher.fit(refs)
    image = read_image(faces / "images/000002.png")
    labels, confidence = matcher.predict(image)
    pil_labels, pil_confidence = matcher.predict(Image.fromarray(image))
    np.testing.assert_array_equal(labels, pil_labels)
    np.testing.assert_array_equal(confidence, pil_confidence)
    assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
    network, cfg = load_matcher(_shipped_matcher())
    expected, expected_conf = propagate_correlation(image, [(refs.images[0], refs.masks[0])], network,
                                                    refs.num_classes, tau=cfg.tau, k=cfg.k, patch=cfg.patch,
                                                    work_size=matcher.work_size)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(confidence, expected_conf, atol=1e-6)
    probs, conf = matcher.predict_proba(image)
    assert probs.shape == (refs.num_classes, *image.shape[:2]) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(refs.classes)[probs.argmax(0)], labels)
    # A smaller image in memory is labelled at its own size.
    small = np.asarray(Image.fromarray(image).resize((20, 24)))
    assert matcher.predict(small)[0].shape == (24, 20)


def _shipped_matcher() -> Path:
    from coordgan_cli.inference import resolve_matcher

    return resolve_matcher(None)


class NearestColour(MatcherBase):
    """Each query pixel takes the label of the reference pixel of nearest RGB colour."""

    name = "nearest-colour"

    def fit(self, references: References) -> None:
        super().fit(references)
        keep = [m != 255 for m in references.masks]
        self.colours = np.concatenate([im[k] for im, k in zip(references.images, keep)]).astype(np.float32)
        self.ids = np.concatenate([m[k] for m, k in zip(references.masks, keep)])

    def predict_proba(self, image: np.ndarray, *, name=None) -> tuple[np.ndarray, np.ndarray]:
        from scipy.spatial import cKDTree

        distance, index = cKDTree(self.colours).query(image.reshape(-1, 3).astype(np.float32))
        probs = np.zeros((self.references.num_classes, image.shape[0] * image.shape[1]), np.float32)
        probs[self.ids[index], np.arange(index.size)] = 1.0
        confidence = (1.0 / (1.0 + distance)).astype(np.float32)
        return probs.reshape(-1, *image.shape[:2]), confidence.reshape(image.shape[:2])


def _nearest_colour_slow(image: np.ndarray, refs: References) -> np.ndarray:
    """The straightforward reference: every pixel against every labelled reference pixel. Returns
    (H, W, 256) bool: the labels of the reference pixels at the smallest distance (ties kept)."""
    colours = np.concatenate([im[m != 255] for im, m in zip(refs.images, refs.masks)]).astype(np.int64)
    ids = np.concatenate([m[m != 255] for m in refs.masks])
    allowed = np.zeros((*image.shape[:2], 256), bool)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            d = ((colours - image[y, x].astype(np.int64)) ** 2).sum(1)
            allowed[y, x, ids[d == d.min()]] = True
    return allowed


def _assert_nearest(labels: np.ndarray, allowed: np.ndarray) -> None:
    assert np.take_along_axis(allowed, labels[..., None].astype(np.int64), axis=2).all()


def test_custom_matcher_through_label_folder_and_cli(faces: Path, tmp_path: Path, registry) -> None:
    register_matcher("nearest-colour", lambda **options: NearestColour())
    refs = References.from_pairs([(faces / "images/000000.png", faces / "masks/000000.png"),
                                  (faces / "images/000001.png", faces / "masks/000001.png")])
    summary = label_folder(refs, [faces / "images/000002.png", faces / "images/000003.png"], tmp_path / "out",
                           matcher="nearest-colour")
    assert summary["count"] == 2 and summary["matcher"] == "nearest-colour"
    for name in ("000002", "000003"):
        image = read_image(faces / "images" / f"{name}.png")
        _assert_nearest(read_mask(tmp_path / "out" / "labels" / f"{name}.png"), _nearest_colour_slow(image, refs))
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["000002.png", "000003.png"]
    # Rerun resumes; the command line reaches the registered matcher by name.
    assert label_folder(refs, [faces / "images/000002.png"], tmp_path / "out", matcher="nearest-colour")["resumed"] == 1
    result = CliRunner().invoke(app, ["--quiet", "propagate", "--ref", str(faces / "images/000000.png"), "--mask",
                                      str(faces / "masks/000000.png"), "--queries", str(faces / "images"), "--out",
                                      str(tmp_path / "cli"), "--matcher", "nearest-colour", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 4
    ref_only = References.from_pairs([(faces / "images/000000.png", faces / "masks/000000.png")])
    _assert_nearest(read_mask(tmp_path / "cli" / "labels" / "000003.png"),
                    _nearest_colour_slow(read_image(faces / "images/000003.png"), ref_only))


def test_coordinates_predict_by_name_equals_label_folder(faces: Path, tmp_path: Path) -> None:
    refs = References.from_pairs([(faces / "images/000000.png", faces / "masks/000000.png")], root=faces / "images")
    label_folder(refs, faces / "images", tmp_path / "out", matcher="coordinates",
                 store=faces / "correspondence.h5")
    matcher = make_matcher("coordinates", store=faces / "correspondence.h5", write_back=False)
    matcher.fit(refs)
    image = read_image(faces / "images/000003.png")
    labels, confidence = matcher.predict(image, name="000003.png")
    np.testing.assert_array_equal(labels, read_mask(tmp_path / "out" / "labels" / "000003.png"))
    assert (labels == read_mask(faces / "masks/000003.png")).mean() > 0.8  # true maps: near-exact labels
    with pytest.raises(UserError, match="needs its name"):
        matcher.predict(image)
    matcher.close()


def test_references_from_arrays_and_validation(faces: Path, tmp_path: Path) -> None:
    image, mask = read_image(faces / "images/000000.png"), read_mask(faces / "masks/000000.png")
    refs = References.from_pairs([(image, mask)], labels=faces / "labels.json")
    assert refs.names == ["reference0"] and refs.paths == [None]
    assert refs.classes == tuple(range(read_labels(faces / "labels.json").num_classes))
    found = References.from_pairs([(faces / "images/000000.png", faces / "masks/000000.png")])
    assert found.labels_file == faces / "labels.json" and found.names == ["000000.png"]
    np.testing.assert_array_equal(found.masks[0], mask)
    with pytest.raises(UserError, match=r"mask is 16×32 but its image"):
        References.from_pairs([(faces / "images/000000.png", mask[:, :16])])
    assert References.from_pairs([(image, mask[::2, ::2])], resize_mask=True).masks[0].shape == (32, 32)
    with pytest.raises(UserError, match="mask is empty"):
        References.from_pairs([(image, np.zeros_like(mask))])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match=re.escape(str(broken))):
        References.from_pairs([(broken, mask)])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{faces / 'images/000000.png'} {faces / 'masks/000000.png'}\n")
    assert References.from_pairs_file(pairs).names == ["000000.png"]
    with pytest.raises(UserError, match="must be one of"):
        make_matcher("no-such-matcher")


def test_import_stays_light() -> None:
    code = ("import sys, coordgan_cli; from coordgan_cli import label_folder, References, make_matcher; "
            "print(sorted(m for m in ('torch', 'scipy', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
