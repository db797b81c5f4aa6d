"""io/: images, masks + labels, atomic writes, the HDF5 correspondence store."""

from __future__ import annotations

import io
import json
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from coordgan_cli.errors import UserError
from coordgan_cli.io import atomic, images, masks, store


# --------------------------------------------------------------------------- images
def test_read_image_converts_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(images.read_image(tmp_path / "rgb.png"), rgb)

    grey = np.arange(42, dtype=np.uint8).reshape(6, 7)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = images.read_image(tmp_path / "grey.png")
    assert out.shape == (6, 7, 3) and np.array_equal(out[..., 1], grey)

    deep = (np.arange(42, dtype=np.uint16) * 1500).reshape(6, 7)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = images.read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out[..., 0].max() == round(41 * 1500 / 65535 * 255)

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent → white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = images.read_image(tmp_path / "rgba.png")
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 0]) == (255, 255, 255)


def test_read_image_applies_exif_orientation(tmp_path):
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = images.read_image(tmp_path / "r.jpg")
    assert out.shape == (8, 4, 3)
    assert images.image_size(tmp_path / "r.jpg") == (8, 4)
    assert out[0, :, 0].mean() > 200 and out[-1, :, 0].mean() < 50  # white half now on top


def test_read_image_errors_name_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(images.ImageReadError, match="broken.png"):
        images.read_image(bad)
    with pytest.raises(UserError, match="not found"):
        images.read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(images.ImageReadError, match="big.png.*too large"):
        images.read_image(tmp_path / "big.png")


def test_list_images_and_path_lists(tmp_path, monkeypatch):
    for rel in ["b/2.png", "a.jpg", "b/1.png", ".hidden/x.png", "notes.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [images.relative_name(p, tmp_path) for p in images.list_images(tmp_path)]
    assert found == ["a.jpg", "b/1.png", "b/2.png"]

    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nb/1.png\n\na.jpg\n")
    root, paths = images.read_path_list(listing)
    assert root == tmp_path and [p.name for p in paths] == ["1.png", "a.jpg"]

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{tmp_path / 'a.jpg'}\n"))
    root, paths = images.read_path_list("-")
    assert root is None and paths == [tmp_path / "a.jpg"]

    with pytest.raises(UserError, match="no such folder"):
        images.read_path_list(tmp_path / "nowhere")


# --------------------------------------------------------------------------- masks
def test_mask_round_trip_all_formats(tmp_path):
    labels = masks.default_labels(6)
    m = np.random.default_rng(1).integers(0, 6, (9, 11)).astype(np.uint8)
    m[0, 0] = masks.IGNORE
    masks.write_mask(tmp_path / "m.png", m, labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert np.array_equal(masks.read_mask(tmp_path / "m.png"), m)
    Image.fromarray(m, mode="L").save(tmp_path / "g.png")
    assert np.array_equal(masks.read_mask(tmp_path / "g.png"), m)
    np.save(tmp_path / "m.npy", m.astype(np.int32))
    assert np.array_equal(masks.read_mask(tmp_path / "m.npy"), m)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="rgb.png.*colour image"):
        masks.read_mask(tmp_path / "rgb.png")


def test_labels_file_round_trip_and_errors(tmp_path):
    labels = masks.LabelSet(names={0: "background", 1: "skin", 3: "eye"}, colours={0: (0, 0, 0), 1: (200, 150, 120), 3: (0, 0, 255)})
    masks.write_labels(tmp_path / "labels.json", labels)
    data = json.loads((tmp_path / "labels.json").read_text())
    assert data["format"] == "coordgan.labels" and data["labels"][1] == {"id": 1, "name": "skin", "colour": [200, 150, 120]}
    again = masks.read_labels(tmp_path / "labels.json")
    assert again == labels and again.num_classes == 4
    assert masks.LabelSet(names=again.names, colours=again.colours).palette()[3 * 3 : 3 * 3 + 3] == [0, 0, 255]
    with pytest.raises(UserError, match="class id.*\\[7\\]"):
        masks.check_mask_ids(np.array([[0, 7]], np.uint8), labels, "x.png")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        masks.read_labels(tmp_path / "bad.json")


# --------------------------------------------------------------------------- atomic
def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# --------------------------------------------------------------------------- store
def _rows(n, h=5, w=6):
    rng = np.random.default_rng(2)
    return [(f"d/{i:03d}.png", rng.uniform(-1, 1, (2, h, w)).astype(np.float32), rng.random((h, w)) > 0.5) for i in range(n)]


def test_store_layout_opens_with_plain_h5py(tmp_path):
    path = tmp_path / "maps.h5"
    rows = _rows(3)
    with store.StoreWriter(path, size=(5, 6), source="model", dtype="float32", with_valid=True,
                           config_json='{"a": 1}', checkpoint_sha256="ab" * 32, structure_dim=4) as w:
        for name, corr, valid in rows:
            w.append(name, corr, valid=valid, structure=np.arange(4, dtype=np.float32))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "coordgan.correspondence" and f.attrs["version"] == 1
        assert list(f.attrs["size"]) == [5, 6] and f.attrs["source"] == "model" and f.attrs["complete"] == 3
        assert [n.decode() for n in f["names"][:]] == [r[0] for r in rows]
        assert f["correspondence"].shape == (3, 2, 5, 6) and f["correspondence"].chunks == (1, 2, 5, 6)
        assert f["valid"].dtype == bool and f["structure"].shape == (3, 4)
        np.testing.assert_array_equal(f["correspondence"][1], rows[1][1])
    with store.StoreReader(path) as r:
        assert r.index("d/002.png") == 2 and r.config == {"a": 1}
        np.testing.assert_array_equal(r.valid(0), rows[0][2])
        with pytest.raises(UserError, match="no map named 'nope.png'"):
            r.index("nope.png")


def test_store_resume_drops_unfinished_rows(tmp_path):
    path = tmp_path / "maps.h5"
    rows = _rows(4)
    with store.StoreWriter(path, size=(5, 6), source="ground-truth") as w:
        for name, corr, _ in rows[:2]:
            w.append(name, corr)
    # Simulate a writer killed mid-row: data resized and written, `complete` never raised.
    with h5py.File(path, "r+") as f:
        for k in ("names", "correspondence"):
            f[k].resize(3, axis=0)
        f["names"][2] = "garbage"
    with store.StoreReader(path) as r:
        assert r.names == [rows[0][0], rows[1][0]]
    with store.StoreWriter(path, size=(5, 6), source="ground-truth") as w:
        assert w.complete == 2
        for name, corr, _ in rows[2:]:
            w.append(name, corr)
    with store.StoreReader(path) as r:
        assert r.names == [n for n, _, _ in rows]
        np.testing.assert_allclose(r.correspondence(3), rows[3][1], atol=1e-3)  # float16 storage
    with pytest.raises(UserError, match="another layout"):
        store.StoreWriter(path, size=(7, 6), source="ground-truth")


def test_store_rejects_other_files(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(UserError, match="x.h5.*not a readable HDF5"):
        store.StoreReader(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(UserError, match="not a coordgan correspondence store"):
        store.StoreReader(tmp_path / "y.h5")


def test_store_put_and_merge(tmp_path):
    rows = _rows(4)
    for part, chunk in (("a", rows[:2]), ("b", rows[2:])):
        with store.StoreWriter(tmp_path / f"{part}.h5", size=(5, 6), source="model", with_valid=True) as w:
            for name, corr, valid in chunk:
                w.append(name, corr, valid=valid)
    assert store.copy_rows([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5") == 4
    with store.StoreReader(tmp_path / "all.h5", mode="r+") as r:
        assert r.names == [n for n, _, _ in rows]
        r.put("labels", 3, np.full((5, 6), 2, np.uint8))
        assert r.read("labels", 3).max() == 2 and r.read("labels", 0).max() == 0
    with pytest.raises(UserError, match="more than one shard"):
        store.copy_rows([tmp_path / "a.h5", tmp_path / "a.h5"], tmp_path / "dup.h5")


def test_labels_writer_rows_resume_and_overwrite(tmp_path):
    path = tmp_path / "labels.h5"
    lab = [np.full((5, 6), i, np.uint8) for i in range(3)]
    conf = [np.full((5, 6), 0.25 * (i + 1), np.float32) for i in range(3)]
    with store.LabelsWriter(path, size=(5, 6), store=tmp_path / "maps.h5") as w:
        assert w.put("a.png", lab[0], conf[0]) == 0 and w.put("sub/b.png", lab[1], conf[1]) == 1
        with pytest.raises(ValueError, match="must be"):
            w.put("c.png", lab[0][:4], conf[0][:4])
    # A writer killed after growing the datasets but before raising ``complete``: the row is dropped.
    with h5py.File(path, "r+") as f:
        for name in ("names", "labels", "confidence"):
            f[name].resize(3, axis=0)
    with store.LabelsWriter(path, size=(5, 6), store=tmp_path / "maps.h5") as w:
        assert len(w) == 2
        assert w.put("a.png", lab[2], conf[2]) == 0  # a redone query overwrites its row
        assert w.put("c.png", lab[1], conf[1]) == 2
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "coordgan.labels-store" and list(f.attrs["size"]) == [5, 6]
        assert f.attrs["complete"] == 3 and [n.decode() for n in f["names"][:]] == ["a.png", "sub/b.png", "c.png"]
        np.testing.assert_array_equal(f["labels"][0], lab[2])
        assert f["confidence"].dtype == np.float16 and f["confidence"][0].max() == 0.75
    with pytest.raises(UserError, match="another layout"):
        store.LabelsWriter(path, size=(6, 6), store=tmp_path / "maps.h5")


def test_store_survives_repeated_kill_9(tmp_path):
    """A writer killed at arbitrary moments leaves a store that reads and resumes."""
    import subprocess
    import time

    path = tmp_path / "maps.h5"
    child = (
        "import sys, numpy as np\n"
        "from coordgan_cli.io.store import StoreWriter\n"
        "w = StoreWriter(sys.argv[1], size=(32, 32), source='model', with_valid=True)\n"
        "i = w.complete\n"
        "while True:\n"
        "    w.append(f'd/{i:06d}.png', np.full((2, 32, 32), i % 7 / 7, np.float32), valid=np.ones((32, 32), bool))\n"
        "    i += 1\n"
    )
    for delay in (0.9, 1.3, 1.1, 1.6):
        proc = subprocess.Popen([sys.executable, "-c", child, str(path)])
        time.sleep(delay)
        proc.kill()
        proc.wait()
        with store.StoreReader(path) as r:
            n = len(r)
            assert r.names == [f"d/{i:06d}.png" for i in range(n)]
            if n:
                np.testing.assert_allclose(r.correspondence(n - 1), (n - 1) % 7 / 7, atol=1e-3)
    assert n > 0


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(tmp_path / "b.txt").st_mode & 0o777


def test_a_store_open_for_writing_elsewhere_is_named_as_such(tmp_path):
    import os
    import subprocess

    path = tmp_path / "maps.h5"
    with store.StoreWriter(path, size=(5, 6), source="model") as w:
        w.append("a.png", _rows(1)[0][1])
    hold = "import sys, h5py\nf = h5py.File(sys.argv[1], 'r+')\nprint('open', flush=True)\nsys.stdin.read()\n"
    writer = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(UserError, match="maps.h5: another program is writing this store"):
            store.StoreReader(path)
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    with store.StoreReader(path) as r:  # and once it is done, the store reads
        assert r.names == ["a.png"]
