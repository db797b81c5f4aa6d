"""``coordgan propagate`` end to end on a tiny synthetic set built here (numpy + StoreWriter)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.io.coco import mask_annotations, write_coco
from coordgan_cli.io.images import write_image
from coordgan_cli.io.masks import labels_from_names, read_mask, write_labels, write_mask
from coordgan_cli.io.store import StoreReader, StoreWriter

from test_vote import parts_mask, smooth_warp

LABELS = labels_from_names(["background", "face", "hair", "left_eye", "right_eye"])
SIZE = 24


def _image(cmap: np.ndarray) -> np.ndarray:
    """A picture whose colours follow the canonical coordinates (plus the parts)."""
    x, y = cmap
    parts = parts_mask(cmap)
    rgb = np.stack([(x + 1) * 110, (y + 1) * 110, parts * 50.0], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    write_labels(root / "labels.json", LABELS)
    maps = {name: smooth_warp(SIZE, seed) for seed, name in enumerate(["a.png", "b.png", "sub/c.png", "d.png"])}
    with StoreWriter(root / "maps.h5", size=(SIZE, SIZE), source="ground-truth", with_valid=True) as store:
        for name, cmap in maps.items():
            store.append(name, cmap, valid=np.ones((SIZE, SIZE), bool))
    for name, cmap in maps.items():
        if name == "d.png":
            # Its image is larger than its stored map: the map is resampled to the image's size.
            big = np.stack([np.kron(c, np.ones((3, 3)))[1:-1:2, 1:-1:2] for c in cmap])  # 35×35 → crop below
            write_image(root / "images" / name, _image(big[:, :32, :32]))
        else:
            write_image(root / "images" / name, _image(cmap))
        write_mask(root / "masks" / Path(name).with_suffix(".png").name, parts_mask(cmap), LABELS)
    return root


def _run(*args: str):
    result = CliRunner().invoke(app, ["--quiet", "propagate", *map(str, args)])
    return result


def _summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_end_to_end(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    store_sha = _sha256(dataset / "maps.h5")
    res = _run("--store", dataset / "maps.h5", "--ref", dataset / "images/a.png", "--mask", dataset / "masks/a.png",
               "--queries", dataset / "images", "--out", out, "--json")
    summary = _summary(res)
    assert summary["count"] == 4 and summary["skipped"] == []
    assert set(summary["outputs"]) >= {"labels", "labels_json", "annotations", "report", "overlays", "confidence"}
    assert 0.5 < summary["mean_confidence"] <= 1.0
    assert summary["tau"] == pytest.approx(0.01 * 128 / SIZE)  # the paper's τ scaled to the references' side
    assert summary["outputs"]["labels_h5"] == str(out / "labels.h5")
    with StoreReader(dataset / "maps.h5") as store, h5py.File(out / "labels.h5", "r") as written:
        assert not store.has("labels") and not store.has("confidence")  # the input store is never written
        rows = {n.decode(): i for i, n in enumerate(written["names"][: written.attrs["complete"]])}
        assert sorted(rows) == ["a.png", "b.png", "sub/c.png"] and list(written.attrs["size"]) == [SIZE, SIZE]
        for name in ["a.png", "b.png", "sub/c.png"]:
            pred = read_mask(out / "labels" / name)
            truth = parts_mask(store.correspondence(store.index(name)))
            assert pred.shape == (SIZE, SIZE)
            assert (pred == truth).mean() > 0.93, name
            # OUT/labels.h5 holds the labels and confidence of the queries at the store's size, by store name.
            np.testing.assert_array_equal(written["labels"][rows[name]], pred)
            assert written["confidence"][rows[name]].dtype == np.float16
            assert 0.5 < written["confidence"][rows[name]].mean() <= 1.0
    assert _sha256(dataset / "maps.h5") == store_sha
    # d.png is labelled at its own 32×32 size; its labels (not at the store's 24×24) are not in labels.h5.
    assert read_mask(out / "labels" / "d.png").shape == (32, 32)
    assert (out / "overlays" / "sub" / "c.jpg").is_file() and (out / "confidence" / "sub" / "c.png").is_file()
    # COCO loads in pycocotools and decodes to exactly the PNGs.
    coco = COCO(str(out / "annotations.json"))
    for img in coco.dataset["images"]:
        decoded = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
            decoded[coco.annToMask(ann) > 0] = ann["category_id"]
        np.testing.assert_array_equal(decoded, read_mask(out / "labels" / Path(img["file_name"]).with_suffix(".png")))
    assert json.loads((out / "labels.json").read_text())["labels"][1]["name"] == "face"
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 4 + 1 and "data:image/jpeg;base64," in page and "<script>" in page
    assert not list(out.rglob(".*.tmp*"))  # no temporary files left behind

    # Resume: a rerun skips everything; a removed label PNG is redone.
    again = _summary(_run("--store", dataset / "maps.h5", "--ref", dataset / "images/a.png", "--mask",
                          dataset / "masks/a.png", "--queries", dataset / "images", "--out", out, "--json"))
    assert again["new"] == 0 and again["resumed"] == 4 and again["count"] == 4
    (out / "labels" / "b.png").unlink()
    third = _summary(_run("--store", dataset / "maps.h5", "--ref", dataset / "images/a.png", "--mask",
                          dataset / "masks/a.png", "--queries", dataset / "images", "--out", out, "--json"))
    assert third["new"] == 1 and third["count"] == 4
    with h5py.File(out / "labels.h5", "r") as written:  # b.png's row was rewritten, not appended again
        assert written.attrs["complete"] == 3 and written["names"].shape == (3,)
        b_row = [n.decode() for n in written["names"][:]].index("b.png")
        np.testing.assert_array_equal(written["labels"][b_row], read_mask(out / "labels" / "b.png"))
    assert _sha256(dataset / "maps.h5") == store_sha
    assert len(COCO(str(out / "annotations.json")).dataset["images"]) == 4
    # Other settings in the same folder are refused rather than mixed.
    other = _run("--store", dataset / "maps.h5", "--ref", dataset / "images/a.png", "--mask", dataset / "masks/a.png",
                 "--queries", dataset / "images", "--out", out, "--mode", "hard")
    assert other.exit_code == 2 and "other references or settings" in other.stderr


def test_two_refs_list_file_min_confidence_keypoints_polygons(dataset: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{dataset / 'images/a.png'} {dataset / 'masks/a.png'}\n{dataset / 'images/b.png'}, "
                     f"{dataset / 'masks/b.png'}\n")
    listing = tmp_path / "queries.txt"
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    listing.write_text(f"{dataset / 'images/sub/c.png'}\nnotes.txt\nbroken.png\n")
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [12, 12, 2, 5, 20, 2, 0, 0, 0]}],
        "categories": [{"id": 1, "name": "thing", "keypoints": ["centre", "corner", "hidden"], "skeleton": []}]}))
    out = tmp_path / "out"
    summary = _summary(_run("--store", dataset / "maps.h5", "--refs", pairs, "--queries", listing, "--out", out,
                            "--min-confidence", "0.9", "--polygons", "--ref-keypoints", kp, "--json"))
    assert summary["count"] == 1
    assert {s["name"] for s in summary["skipped"]} == {"notes.txt", "broken.png"}
    # Queries from a list file are named relative to the list's folder.
    labels_png = next((out / "labels").rglob("c.png"))
    pred = read_mask(labels_png)
    assert (pred == 255).any()  # low-confidence pixels became ignore
    coco = json.loads((out / "annotations.json").read_text())
    assert all(isinstance(a["segmentation"], list) for a in coco["annotations"])
    kps = json.loads((out / "keypoints.json").read_text())
    ann = kps["annotations"][0]
    assert len(ann["keypoints"]) == 9 and ann["keypoints"][8] == 0 and len(ann["keypoint_scores"]) == 3
    assert kps["categories"][0]["keypoints"] == ["centre", "corner", "hidden"]


def test_ref_coco_input(dataset: Path, tmp_path: Path) -> None:
    mask = read_mask(dataset / "masks/a.png")
    coco_path = tmp_path / "export.json"
    write_coco(coco_path, [{"id": 5, "file_name": "project/a.png", "height": SIZE, "width": SIZE}],
               mask_annotations(mask, 5, 1), LABELS)
    out = tmp_path / "out"
    summary = _summary(_run("--store", dataset / "maps.h5", "--ref", dataset / "images/a.png", "--ref-coco", coco_path,
                            "--queries", dataset / "images", "--out", out, "--json"))
    assert summary["count"] == 4
    np.testing.assert_array_equal(read_mask(out / "labels/a.png"), mask)
    assert [c["name"] for c in json.loads((out / "annotations.json").read_text())["categories"]] == ["face", "hair", "left_eye", "right_eye"]


def test_bad_inputs(dataset: Path, tmp_path: Path) -> None:
    base = ["--store", dataset / "maps.h5", "--queries", dataset / "images", "--out", tmp_path / "o"]
    # Unknown class id vs the labels file.
    bad = parts_mask(smooth_warp(SIZE, 0))
    bad[0, 0] = 9
    write_mask(dataset / "masks/bad.png", bad, LABELS)
    r = _run(*base, "--ref", dataset / "images/a.png", "--mask", dataset / "masks/bad.png")
    assert r.exit_code == 2 and "[9]" in r.stderr and "labels file" in r.stderr
    # Empty mask.
    write_mask(dataset / "masks/empty.png", np.zeros((SIZE, SIZE), np.uint8), LABELS)
    r = _run(*base, "--ref", dataset / "images/a.png", "--mask", dataset / "masks/empty.png")
    assert r.exit_code == 2 and "empty" in r.stderr
    # Mask size ≠ image size, unless --resize-mask.
    write_mask(dataset / "masks/small.png", parts_mask(smooth_warp(12, 0)), LABELS)
    r = _run(*base, "--ref", dataset / "images/a.png", "--mask", dataset / "masks/small.png")
    assert r.exit_code == 2 and "--resize-mask" in r.stderr
    r = _run(*base, "--ref", dataset / "images/a.png", "--mask", dataset / "masks/small.png", "--resize-mask")
    assert r.exit_code == 0, r.output
    # A reference missing from the store.
    write_image(tmp_path / "stranger.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    r = _run(*base, "--ref", tmp_path / "stranger.png", "--mask", dataset / "masks/a.png")
    assert r.exit_code == 2 and "stranger.png" in r.stderr and "maps.h5" in r.stderr
    # No maps at all.
    r = _run("--queries", dataset / "images", "--out", tmp_path / "o2", "--ref", dataset / "images/a.png",
             "--mask", dataset / "masks/a.png")
    assert r.exit_code == 2 and "--store" in r.stderr
    # Mismatched --ref/--mask counts.
    r = _run(*base, "--ref", dataset / "images/a.png", "--ref", dataset / "images/b.png", "--mask",
             dataset / "masks/a.png")
    assert r.exit_code == 2 and "--mask" in r.stderr
