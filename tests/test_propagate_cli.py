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


def test_a_read_only_store_shared_by_other_readers_is_never_written(dataset: Path, tmp_path: Path) -> None:
    """The store is an input: opened read-only, so a read-only file works, another process may hold
    it open at the same time (HDF5 file locks refused a writer then), two runs may read it at once,
    and its bytes never change."""
    import os
    import subprocess
    import sys
    import threading

    from coordgan_cli.labelling import References, label_folder

    store = dataset / "maps.h5"
    store.chmod(0o444)
    before = _sha256(store)
    hold = ("import sys, h5py\nf = h5py.File(sys.argv[1], 'r')\nprint('open', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
    try:
        assert holder.stdout.readline().strip() == "open"
        summaries: dict[str, dict] = {}

        def run(name: str) -> None:
            refs = References.from_pairs([(dataset / "images/a.png", dataset / "masks/a.png")],
                                         root=dataset / "images")
            summaries[name] = label_folder(refs, dataset / "images", tmp_path / name, "coordinates", store=store)

        threads = [threading.Thread(target=run, args=(name,)) for name in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result = _run("--store", store, "--ref", dataset / "images/a.png", "--mask", dataset / "masks/a.png",
                      "--queries", dataset / "images", "--out", tmp_path / "cli", "--json")
        assert result.exit_code == 0, result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert sorted(summaries) == ["one", "two"] and all(s["count"] == 4 for s in summaries.values())
    for name in ("a.png", "b.png", "sub/c.png", "d.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / "one" / "labels" / name),
                                      read_mask(tmp_path / "two" / "labels" / name))
        np.testing.assert_array_equal(read_mask(tmp_path / "one" / "labels" / name),
                                      read_mask(tmp_path / "cli" / "labels" / name))
    assert _sha256(store) == before


def test_duplicate_reference_pairs_are_used_once(dataset: Path, tmp_path: Path) -> None:
    a = ["--ref", dataset / "images/a.png", "--mask", dataset / "masks/a.png"]
    base = ["--store", dataset / "maps.h5", "--queries", dataset / "images", "--json"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("images/a.png masks/a.png\n")
    (tmp_path / "images").symlink_to(dataset / "images")
    (tmp_path / "masks").symlink_to(dataset / "masks")
    once = _summary(_run(*base, *a, "--out", tmp_path / "once"))
    result = CliRunner().invoke(app, ["propagate", *map(str, [*base, *a, *a, "--refs", pairs, "--out",
                                                               tmp_path / "thrice"])])
    twice = _summary(result)
    assert result.stderr.count("is given twice: using it once") == 2
    assert twice["count"] == once["count"] == 4
    for name in ("a.png", "b.png", "sub/c.png", "d.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / "once" / "labels" / name),
                                      read_mask(tmp_path / "thrice" / "labels" / name))
    # The same image with another mask is another reference, kept.
    other = CliRunner().invoke(app, ["propagate", *map(str, [*base, *a, "--ref", dataset / "images/a.png", "--mask",
                                                              dataset / "masks/b.png", "--out", tmp_path / "two"])])
    assert other.exit_code == 0 and "given twice" not in other.stderr


def test_report_limit_zero_keeps_only_the_summary(dataset: Path, tmp_path: Path) -> None:
    summary = _summary(_run("--store", dataset / "maps.h5", "--ref", dataset / "images/a.png", "--mask",
                            dataset / "masks/a.png", "--queries", dataset / "images", "--out", tmp_path / "o",
                            "--report-limit", "0", "--json"))
    page = (tmp_path / "o" / "report.html").read_text()
    assert summary["count"] == 4 and page.count("<tr>") == 1 and "data:image/jpeg;base64," not in page


def test_device_is_resolved_with_a_store(dataset: Path, tmp_path: Path) -> None:
    import torch

    args = ["propagate", "--store", str(dataset / "maps.h5"), "--ref", str(dataset / "images/a.png"), "--mask",
            str(dataset / "masks/a.png"), "--queries", str(dataset / "images"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, ["--device", "cuda", *args])
    if torch.cuda.is_available():
        assert result.exit_code == 0 and "maps come from --store" in result.stderr, result.output
    else:
        assert result.exit_code == 2 and "no CUDA device" in result.stderr
        assert not (tmp_path / "o").exists()
