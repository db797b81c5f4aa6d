"""The labelled-folder reader (images/, masks/, labels.json) and the real-data converter script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coordgan_cli.data.folder import read_folder_dataset
from coordgan_cli.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, sizes=((20, 30), (16, 16)), labels=None, palette=False) -> Path:
    (root / "images" / "sub").mkdir(parents=True)
    (root / "masks" / "sub").mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps(labels or {"0": "background", "1": "hood", "2": "wheel"}))
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        rel = f"sub/b{i}" if i % 2 else f"a{i}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{rel}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2] = 1
        mask[-2:] = 2
        img = Image.fromarray(mask, mode="L")
        if palette:
            img = img.convert("P")
        img.save(root / "masks" / f"{rel}.png")
    return root


def test_reads_pairs_by_relative_name(tmp_path):
    ds = read_folder_dataset(make_folder(tmp_path / "d", palette=True))
    assert ds.names == ["a0", "sub/b1"] and len(ds) == 2
    image, mask = ds.pair(1)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert mask.shape == (16, 16) and set(np.unique(mask)) == {0, 1, 2}
    assert ds.labels.names[2] == "wheel"
    assert ds.index("sub/b1") == 1


@pytest.mark.parametrize("remove,message", [
    ("labels.json", r"labels\.json: missing"),
    ("masks", r"masks: missing; a labelled folder has images/, masks/ and labels\.json"),
    ("masks/sub/b1.png", r"masks/sub/b1\.png: mask missing for image images/sub/b1\.jpg"),
])
def test_layout_mistakes_name_the_file(tmp_path, remove, message):
    root = make_folder(tmp_path / "d")
    target = root / remove
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(UserError, match=message):
        read_folder_dataset(root)


def test_missing_folder_and_size_mismatch_and_unknown_ids(tmp_path):
    with pytest.raises(UserError, match="dataset folder not found"):
        read_folder_dataset(tmp_path / "nope")
    root = make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(root / "masks" / "a0.png")
    ds = read_folder_dataset(root)
    with pytest.raises(UserError, match=r"a0\.png: mask is 8×8 but its image a0\.jpg is 30×20"):
        ds.pair(0)
    Image.fromarray(np.full((16, 16), 7, np.uint8), mode="L").save(root / "masks" / "sub" / "b1.png")
    with pytest.raises(UserError, match=r"b1\.png: class id\(s\) \[7\] are not in the labels file"):
        ds.mask(1)
    with pytest.raises(UserError, match="no image named 'zz'"):
        ds.index("zz")


def _converter():
    spec = importlib.util.spec_from_file_location("convert_realdata", REPO / "scripts" / "convert_realdata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_writes_readable_folders(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        (data / "carparts_dsmlr" / split / "images").mkdir(parents=True)
        (data / "carparts_dsmlr" / split / "masks").mkdir()
        Image.new("RGB", (40, 30), (10, 20, 30)).save(data / "carparts_dsmlr" / split / "images" / "car1.jpg")
        Image.fromarray(np.full((30, 40), 18, np.uint8), mode="L").save(data / "carparts_dsmlr" / split / "masks" / "car1.png")
    faces = data / "celebamaskhq_maskgan_samples"
    (faces / "images").mkdir(parents=True)
    (faces / "masks").mkdir()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(faces / "images" / "0.jpg")
    Image.fromarray(np.full((32, 32), 13, np.uint8), mode="L").save(faces / "masks" / "0.png")
    sets = _converter().convert_all(data, tmp_path / "out")
    cars = read_folder_dataset(sets["cars-test"])
    assert cars.labels.names[18] == "wheel" and cars.pair(0)[1].max() == 18
    face = read_folder_dataset(sets["faces"])
    image, mask = face.pair(0)  # the 64² image was resized to its 32² mask
    assert image.shape == (32, 32, 3) and face.labels.names[13] == "hair"
    with pytest.raises(SystemExit, match="carparts_dsmlr/train/images: not found"):
        _converter().convert_all(tmp_path / "empty", tmp_path / "out2")


def test_benchmark_refuses_a_missing_data_folder(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("realphoto", REPO / "benchmarks" / "realphoto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--data", str(tmp_path / "none"), "--json"]) == 2
    assert "data folder not found" in capsys.readouterr().err
