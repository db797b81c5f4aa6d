"""Synthetic categories with exact ground truth: generator, set writer and ``coordgan synth``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.data import synth_set
from coordgan_cli.data.categories import CATEGORIES, get_category, render_part_scalar, render_parts
from coordgan_cli.data.synth_set import SynthSpec, write_synth_set
from coordgan_cli.data.synthetic import (
    TEMPLATE_EXTENT,
    generate_sample,
    pixel_centres,
    reference_geometry,
    sample_instance_map_for,
)
from coordgan_cli.errors import UserError
from coordgan_cli.io.masks import read_labels, read_mask

CATS = sorted(CATEGORIES)


def _bilinear(corr: np.ndarray, x: float, y: float) -> np.ndarray:
    """(2,) bilinear sample of a (2, H, W) map at pixel-index coordinates (x, y)."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    h, w = corr.shape[1:]
    xs, ys = np.clip([x0, x0 + 1], 0, w - 1), np.clip([y0, y0 + 1], 0, h - 1)
    top = corr[:, ys[0], xs[0]] * (1 - fx) + corr[:, ys[0], xs[1]] * fx
    bottom = corr[:, ys[1], xs[0]] * (1 - fx) + corr[:, ys[1], xs[1]] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATS)
def test_sample_shapes_dtypes_and_determinism(category):
    for size in (16, 37):
        a = generate_sample(category, 3, size=size, seed=5, difficulty="hard")
        b = generate_sample(category, 3, size=size, seed=5, difficulty="hard")
        assert a.image.shape == (size, size, 3) and a.image.dtype == np.uint8
        assert a.mask.shape == (size, size) and a.mask.dtype == np.uint8
        assert a.correspondence.shape == (2, size, size) and a.correspondence.dtype == np.float32
        assert a.valid.shape == (size, size) and a.valid.dtype == bool
        k = len(get_category(category).keypoints)
        assert k >= 10 and a.keypoints.shape == (k, 3)
        for name in ("image", "mask", "correspondence", "valid", "keypoints"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    other = generate_sample(category, 4, size=37, seed=5, difficulty="hard")
    assert not np.array_equal(other.image, a.image)
    assert np.abs(a.correspondence).max() <= 1.0
    assert len(get_category(category).labels) >= 9  # >= 8 part classes + background


def test_instances_are_the_same_at_every_size():
    # Parameters are drawn before anything size-dependent: one seed gives one instance.
    small = generate_sample("faces", 2, size=32, seed=0)
    large = generate_sample("faces", 2, size=64, seed=0)
    # The pixel centre of small (i, j) is the centre of the 2 x 2 block of large pixels; the
    # smooth map there is close to the mean of those four pixels' coordinates.
    blocks = large.correspondence.reshape(2, 32, 2, 32, 2)
    inside = np.all(np.abs(blocks) < 0.99, axis=(0, 2, 4))  # clipping to [-1, 1] is not smooth
    pooled = blocks.mean(axis=(2, 4))
    assert inside.mean() > 0.3
    assert np.abs(pooled - small.correspondence)[:, inside].max() < 2e-3
    assert abs(large.valid.sum() / 4 - small.valid.sum()) < 0.05 * small.valid.sum()


@pytest.mark.parametrize("category", CATS)
def test_mask_is_the_template_at_the_stored_coordinate(category):
    cat = get_category(category)
    for index in range(4):
        s = generate_sample(cat, index, size=48, seed=9, difficulty="hard")
        ids, _ = render_parts(cat, s.correspondence[0], s.correspondence[1])
        # Exact: wherever no occluder covers the object, the mask is the template's part at the
        # pixel's stored coordinate; occluded object pixels are background and not valid.
        occluded = (ids > 0) & (s.mask == 0)
        assert np.array_equal(s.mask[~occluded], ids[~occluded])
        assert np.array_equal(s.valid, s.mask > 0)


def test_hard_has_occluders_and_flips_easy_has_neither():
    hard = [generate_sample("faces", i, size=48, seed=1, difficulty="hard") for i in range(8)]
    cat = get_category("faces")
    occluded = 0
    for s in hard:
        ids, _ = render_parts(cat, s.correspondence[0], s.correspondence[1])
        occluded += int(np.sum((ids > 0) & ~s.valid))
    assert occluded > 0
    assert any(s.flipped for s in hard) and not all(s.flipped for s in hard)
    # COCO visibility: covered keypoints (1) sit on pixels that are not visible object pixels.
    covered = [(s, x, y) for s in hard for x, y, v in s.keypoints if v == 1]
    assert covered
    for s, x, y in covered:
        assert not s.valid[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]
    easy = [generate_sample("faces", i, size=48, seed=1, difficulty="easy") for i in range(8)]
    assert not any(s.flipped for s in easy)
    for s in easy:
        ids, _ = render_parts(cat, s.correspondence[0], s.correspondence[1])
        assert np.array_equal(ids, s.mask)


@pytest.mark.parametrize("category", CATS)
def test_vectorised_generator_matches_the_per_pixel_loop(category):
    size = 20
    s = generate_sample(category, 1, size=size, seed=3, difficulty="medium")
    corr, ids, _ = reference_geometry(category, 1, size=size, seed=3, difficulty="medium")
    assert np.allclose(np.clip(corr, -1, 1), s.correspondence, atol=1e-6, rtol=0)
    assert np.sum(ids != s.mask) <= 1  # float rounding could flip one boundary pixel at most
    # The tiled part renderer agrees with a scalar loop over the same coordinates.
    cat = get_category(category)
    u, v = s.correspondence
    loop = np.array([[render_part_scalar(cat, float(u[i, j]), float(v[i, j]))[0] for j in range(size)]
                     for i in range(size)])
    assert np.array_equal(loop, render_parts(cat, u, v)[0])


def test_tiled_and_flat_part_rendering_agree():
    cat = get_category("cars")
    imap = sample_instance_map_for(cat, 0, seed=2, difficulty="hard")
    u, v = (a.astype(np.float32) for a in imap.grid(70))
    tiled_ids, tiled_depth = render_parts(cat, u, v)
    flat_ids, flat_depth = render_parts(cat, u.ravel(), v.ravel())
    assert np.array_equal(tiled_ids.ravel(), flat_ids) and np.array_equal(tiled_depth.ravel(), flat_depth)


@pytest.mark.parametrize("category", CATS)
def test_template_stays_inside_the_canonical_square(category):
    for _, shape in get_category(category).parts:
        u0, u1, v0, v1 = shape.bounds()
        assert -TEMPLATE_EXTENT <= u0 and u1 <= TEMPLATE_EXTENT and -TEMPLATE_EXTENT <= v0 and v1 <= TEMPLATE_EXTENT


def test_grid_evaluation_equals_pointwise_map():
    imap = sample_instance_map_for("faces", 7, seed=0, difficulty="hard")
    xs = pixel_centres(50, np.float64)
    u, v = imap(xs[None, :], xs[:, None])
    gu, gv = imap.grid(50)
    assert np.abs(u - gu).max() < 1e-6 and np.abs(v - gv).max() < 1e-6  # float32 exp inside grid()


@pytest.mark.parametrize("category", CATS)
def test_map_is_smooth_and_never_folds(category):
    # Finite-difference Jacobian of the map over the whole image: one sign everywhere (negative
    # for mirrored instances) and bounded, i.e. a smooth one-to-one warp.
    for index in range(6):
        imap = sample_instance_map_for(category, index, seed=4, difficulty="hard")
        u, v = imap.grid(96)
        du_dx, du_dy = np.gradient(u, axis=1), np.gradient(u, axis=0)
        dv_dx, dv_dy = np.gradient(v, axis=1), np.gradient(v, axis=0)
        det = du_dx * dv_dy - du_dy * dv_dx
        sign = -1.0 if imap.flipped else 1.0
        assert np.all(sign * det > 0), (category, index)


@pytest.mark.parametrize("category", CATS)
def test_keypoints_sit_where_the_store_holds_their_canonical_coordinate(category):
    cat = get_category(category)
    targets = cat.keypoint_coords
    checked = 0
    for index in range(5):
        s = generate_sample(cat, index, size=64, seed=11, difficulty="medium")
        for (x, y, vis), target in zip(s.keypoints, targets):
            if vis == 0:
                assert x == 0 and y == 0
                continue
            assert -0.5 <= x < 63.5 and -0.5 <= y < 63.5
            # Sub-pixel: the map interpolated at (x, y) is the keypoint's canonical coordinate ...
            assert np.abs(_bilinear(s.correspondence, x, y) - target).max() < 2e-3
            # ... and the pixel holding it stores a coordinate within half a pixel's footprint.
            row, col = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
            footprint = np.abs(np.gradient(s.correspondence, axis=(1, 2))).max()
            assert np.abs(s.correspondence[:, row, col] - target).max() <= 1.5 * footprint
            if vis == 2:
                assert s.valid[row, col]
            checked += 1
    assert checked >= 5 * 10


def _propagate_nearest(a, b) -> tuple[np.ndarray, np.ndarray]:
    """A's labels at B's visible pixels by nearest canonical coordinate (plain scipy, no toolkit
    code); returns (predicted, truth) over B's visible pixels."""
    _, nearest = cKDTree(a.correspondence[:, a.valid].T).query(b.correspondence[:, b.valid].T)
    return a.mask[a.valid][nearest], b.mask[b.valid]


def _class_ious(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(truth)
    inter = np.array([np.sum((predicted == c) & (truth == c)) for c in classes])
    union = np.array([np.sum((predicted == c) | (truth == c)) for c in classes])
    return inter / union, np.array([np.sum(truth == c) for c in classes])


@pytest.mark.parametrize("category", CATS)
def test_nearest_coordinate_propagation_reproduces_masks(category):
    # Same size: IoU pooled over B's visible pixels (class IoUs weighted by area) >= 0.95.
    a = generate_sample(category, 0, size=128, seed=21, difficulty="medium")
    b = generate_sample(category, 1, size=128, seed=21, difficulty="medium")
    predicted, truth = _propagate_nearest(a, b)
    ious, areas = _class_ious(predicted, truth)
    assert len(ious) >= 8
    assert np.average(ious, weights=areas) >= 0.95, ious
    assert np.mean(predicted == truth) >= 0.97
    # The only errors are nearest-neighbour sampling at part borders (half a pixel of A): with A
    # sampled 4x finer, even the plain mean over classes (eyes, lights, handles...) is >= 0.95.
    fine_a = generate_sample(category, 0, size=512, seed=21, difficulty="medium")
    ious, _ = _class_ious(*_propagate_nearest(fine_a, b))
    assert np.mean(ious) >= 0.95, ious


def test_thread_counts_do_not_change_the_output():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = generate_sample("cars", 0, size=256, seed=0, difficulty="hard")
        cv2.setNumThreads(4)
        four = generate_sample("cars", 0, size=256, seed=0, difficulty="hard")
    finally:
        cv2.setNumThreads(before)
    assert np.array_equal(one.image, four.image) and np.array_equal(one.correspondence, four.correspondence)
    # BLAS threads (the map's small matrix products): compare fresh interpreters.
    code = ("import hashlib; from coordgan_cli.data.synthetic import generate_sample as g; "
            "s = g('faces', 1, size=200, seed=0, difficulty='hard'); "
            "print(hashlib.sha256(s.image.tobytes() + s.correspondence.tobytes()).hexdigest())")
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        digests.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert len(digests) == 1


# ---------------------------------------------------------------------------------------------
# The set on disk and the command
# ---------------------------------------------------------------------------------------------


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _synth(runner: CliRunner, out: Path, *args: str):
    return runner.invoke(app, ["--quiet", "synth", str(out), *args])


ARGS = ["--category", "faces", "--count", "5", "--size", "32", "--seed", "3"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools (NumPy 2 copy keyword)
def test_cli_writes_the_documented_files_and_is_byte_identical(tmp_path):
    runner = CliRunner()
    r1 = _synth(runner, tmp_path / "a", *ARGS, "--json")
    assert r1.exit_code == 0, r1.output
    summary = json.loads(r1.stdout)
    assert summary["written"] == 5 and summary["count"] == 5
    r2 = _synth(runner, tmp_path / "b", *ARGS)
    assert r2.exit_code == 0, r2.output
    da, db = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert da == db  # same arguments -> byte-identical files
    names = [f"{i:06d}.png" for i in range(5)]
    assert set(da) == {*(f"images/{n}" for n in names), *(f"masks/{n}" for n in names), "labels.json",
                       "correspondence.h5", "keypoints.json", "metadata.json", "README.txt"}
    out = tmp_path / "a"
    img = Image.open(out / "images" / names[0])
    assert img.mode == "RGB" and img.size == (32, 32)
    assert Image.open(out / "masks" / names[0]).mode == "P"
    labels = read_labels(out / "labels.json")
    assert len(labels.ids) >= 9 and labels.names[0] == "background"
    meta = json.loads((out / "metadata.json").read_text())
    assert {k: meta[k] for k in ("category", "seed", "count", "size", "difficulty")} == {
        "category": "faces", "seed": 3, "count": 5, "size": 32, "difficulty": "medium"}
    assert meta["complete"] is True and meta["toolkit_version"]
    assert "seed 3" in (out / "README.txt").read_text()

    # The store opens with plain h5py in the documented layout, and agrees with masks/keypoints.
    coco = json.loads((out / "keypoints.json").read_text())
    coco_api = COCO(str(out / "keypoints.json"))
    assert coco_api.getCatIds() == [1] and len(coco_api.getImgIds()) == 5
    cat = get_category("faces")
    assert coco["categories"][0]["keypoints"] == cat.keypoint_names and coco["categories"][0]["skeleton"]
    assert [im["file_name"] for im in coco["images"]] == names
    with h5py.File(out / "correspondence.h5", "r") as f:
        assert f.attrs["format"] == "coordgan.correspondence" and int(f.attrs["version"]) == 1
        assert f.attrs["source"] == "ground-truth" and int(f.attrs["complete"]) == 5
        assert list(f.attrs["size"]) == [32, 32]
        assert [n.decode() for n in f["names"][:]] == names
        assert f["correspondence"].shape == (5, 2, 32, 32) and f["correspondence"].dtype == np.float32
        assert f["valid"].shape == (5, 32, 32) and f["valid"].dtype == bool
        for i, name in enumerate(names):
            corr, valid = f["correspondence"][i], f["valid"][i]
            mask = read_mask(out / "masks" / name)
            assert np.array_equal(valid, mask > 0)
            assert np.array_equal(render_parts(cat, corr[0], corr[1])[0][valid], mask[valid])
            ann = coco["annotations"][i]
            assert ann["image_id"] == coco["images"][i]["id"] and ann["area"] == int(valid.sum())
            kps = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
            assert ann["num_keypoints"] == int(np.sum(kps[:, 2] > 0))
            for (x, y, v), target in zip(kps, cat.keypoint_coords):
                if v > 0:
                    assert np.abs(_bilinear(corr, x, y) - target).max() < 5e-3
            # pycocotools reads the file; the annotation's segmentation is the visible object.
            assert np.array_equal(coco_api.annToMask(coco_api.loadAnns([ann["id"]])[0]).astype(bool), valid)
            # The image on disk is the generator's image.
            s = generate_sample("faces", i, size=32, seed=3)
            assert np.array_equal(np.asarray(Image.open(out / "images" / name)), s.image)


def test_workers_write_the_same_files(tmp_path):
    spec = SynthSpec("cars", count=6, size=24, seed=2, difficulty="hard")
    write_synth_set(tmp_path / "serial", spec)
    write_synth_set(tmp_path / "parallel", spec, workers=2)
    assert _digests(tmp_path / "serial") == _digests(tmp_path / "parallel")


def test_killed_run_resumes_without_redoing_finished_images(tmp_path, monkeypatch):
    spec = SynthSpec("cars", count=6, size=24, seed=4, difficulty="medium")
    write_synth_set(tmp_path / "full", spec)

    class Killed(Exception):
        pass

    def dies_after(n):
        def progress(items, total):
            for k, item in enumerate(items):
                if k == n:
                    raise Killed
                yield item
        return progress

    out = tmp_path / "partial"
    with pytest.raises(Killed):
        write_synth_set(out, spec, progress=dies_after(3))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] is False and not (out / "keypoints.json").exists()
    with h5py.File(out / "correspondence.h5") as f:
        assert int(f.attrs["complete"]) == 3
    # A kill can leave a torn keypoint line and images of the unfinished row behind.
    with open(out / "keypoints.partial.jsonl", "a") as side:
        side.write('{"index": 3, "keypo')
    (out / "images" / "000003.png").write_bytes(b"garbage")

    made = []
    real = synth_set.generate_sample
    monkeypatch.setattr(synth_set, "generate_sample", lambda cat, i, **kw: made.append(i) or real(cat, i, **kw))
    r = _synth(CliRunner(), out, "--category", "cars", "--count", "6", "--size", "24", "--seed", "4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["resumed_from"] == 3 and made == [3, 4, 5]
    full, resumed = _digests(tmp_path / "full"), _digests(out)
    assert set(full) == set(resumed)
    for name in full:
        if name != "correspondence.h5":  # same rows, but the HDF5 file's internal layout differs
            assert full[name] == resumed[name], name
    with h5py.File(tmp_path / "full" / "correspondence.h5") as f, h5py.File(out / "correspondence.h5") as g:
        for key in ("names", "correspondence", "valid"):
            assert np.array_equal(f[key][:], g[key][:])

    # Rerunning a finished set does nothing; a larger --count extends it.
    made.clear()
    r = _synth(CliRunner(), out, "--category", "cars", "--count", "6", "--size", "24", "--seed", "4", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == 0 and made == []
    write_synth_set(tmp_path / "eight", SynthSpec("cars", count=8, size=24, seed=4))
    made.clear()
    r = _synth(CliRunner(), out, "--category", "cars", "--count", "8", "--size", "24", "--seed", "4")
    assert r.exit_code == 0 and made == [6, 7]
    assert (out / "keypoints.json").read_bytes() == (tmp_path / "eight" / "keypoints.json").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--category", "horses", "--count", "2"], "known categories: cars, faces"),
        (["--category", "faces", "--count", "2", "--size", "8"], "--size: 8"),
        (["--category", "faces", "--count", "0"], "--count: 0"),
        (["--category", "faces", "--count", "2", "--difficulty", "insane"], "--difficulty"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, args, message):
    r = _synth(CliRunner(), tmp_path / "out", *args)
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    runner = CliRunner()
    r = _synth(runner, out, *ARGS)
    assert r.exit_code == 2 and "not empty" in r.stderr and "--overwrite" in r.stderr
    r = _synth(runner, out, *ARGS, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces only synth files
    # A set made with other arguments is not silently mixed in.
    r = _synth(runner, out, "--category", "faces", "--count", "5", "--size", "32", "--seed", "4")
    assert r.exit_code == 2 and "seed 3" in r.stderr
    r = _synth(runner, out, "--category", "faces", "--count", "3", "--size", "32", "--seed", "3")
    assert r.exit_code == 2 and "already holds 5 images" in r.stderr
    r = _synth(runner, out, "--category", "cars", "--count", "2", "--size", "32", "--seed", "3", "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(list((out / "images").iterdir())) == 2


def test_spec_validation_is_a_user_error():
    with pytest.raises(UserError, match="1024"):
        SynthSpec("faces", count=1, size=2048, seed=0).validate()
    with pytest.raises(UserError, match="--seed"):
        SynthSpec("faces", count=1, size=64, seed=-1).validate()
