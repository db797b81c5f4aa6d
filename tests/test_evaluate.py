"""``coordgan evaluate`` end to end on tiny fake trees of every layout, built here with NumPy/PIL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.data.benchmarks import celeba_paper_split, load_benchmark, merge_celeba_parts
from coordgan_cli.errors import UserError
from coordgan_cli.io.masks import labels_from_names, write_labels, write_mask
from coordgan_cli.io.store import StoreReader, StoreWriter

runner = CliRunner()

KEYPOINTS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.0], [-0.3, 0.4], [0.3, 0.4],
                      [0.0, -0.7], [-0.7, 0.0], [0.7, 0.0], [0.0, 0.6], [0.2, 0.2]])


def scene(i: int, h: int, w: int):
    """Image i: a known pixel→canonical map (rotation, scale, shift), its mask and keypoints.

    Returns (image (h, w, 3) uint8, mask (h, w) uint8 ids 0..8, map (2, h, w), keypoints (10, 3)).
    """
    rng = np.random.default_rng(100 + i)
    theta, s = rng.uniform(-0.3, 0.3), rng.uniform(0.85, 1.15)
    t = rng.uniform(-0.15, 0.15, size=2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    uv = np.stack([xs / (w - 1) * 2 - 1, ys / (h - 1) * 2 - 1])
    cmap = np.einsum("ij,jhw->ihw", rot * s, uv) + t[:, None, None]
    r = np.hypot(cmap[0], cmap[1])
    mask = np.where(r < 0.9, 1 + (cmap[0] > 0) + 2 * (cmap[1] > 0) + 4 * (r < 0.45), 0).astype(np.uint8)
    palette = np.random.default_rng(7).integers(0, 255, size=(9, 3))
    image = np.clip(palette[mask] + rng.integers(-10, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)
    inv = np.linalg.inv(rot * s)
    kuv = (inv @ (KEYPOINTS - t).T).T
    kp = np.stack([(kuv[:, 0] + 1) / 2 * (w - 1), (kuv[:, 1] + 1) / 2 * (h - 1), np.full(len(kuv), 2.0)], axis=1)
    inside = (kp[:, 0] >= 0) & (kp[:, 0] <= w - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= h - 1)
    kp[~inside, 2] = 0
    return image, mask, cmap.astype(np.float32), kp


def make_synthetic(root: Path, count: int = 7, size: int = 16) -> Path:
    labels = labels_from_names(["background"] + [f"part {k}" for k in range(1, 9)])
    (root / "images").mkdir(parents=True)
    write_labels(root / "labels.json", labels)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object",
                                                              "keypoints": [f"k{j}" for j in range(10)]}]}
    with StoreWriter(root / "correspondence.h5", size=(size, size), source="ground-truth", dtype="float32",
                     with_valid=True) as store:
        for i in range(count):
            image, mask, cmap, kp = scene(i, size, size)
            name = f"{i:06d}.png"
            Image.fromarray(image).save(root / "images" / name)
            write_mask(root / "masks" / name, mask, labels)
            store.append(name, cmap, valid=mask > 0)
            coco["images"].append({"id": i, "file_name": name, "height": size, "width": size})
            coco["annotations"].append({"id": i, "image_id": i, "category_id": 1,
                                        "keypoints": kp.ravel().tolist(), "num_keypoints": int((kp[:, 2] > 0).sum())})
    (root / "keypoints.json").write_text(json.dumps(coco))
    return root


def shuffled_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """The same names with maps (and valid masks) permuted between images (a derangement)."""
    with StoreReader(src) as reader:
        n = len(reader)
        rng = np.random.default_rng(seed)
        perm = np.roll(rng.permutation(n), 1)
        order = rng.permutation(n)
        perm = np.empty(n, dtype=int)
        perm[order] = np.roll(order, 1)
        with StoreWriter(dst, size=reader.size, source="model", dtype="float32", with_valid=True) as out:
            for i, name in enumerate(reader.names):
                out.append(name, reader.correspondence(int(perm[i])), valid=reader.valid(int(perm[i])))
    return dst


def _json(result) -> dict:
    assert result.exit_code == 0, result.output + str(result.exception)
    return json.loads(result.stdout)


# ------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_truth_near_perfect_and_shuffled_far_lower(tmp_path):
    root = make_synthetic(tmp_path / "syn", count=6, size=32)
    args = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--json"]
    good = _json(runner.invoke(app, args + ["--store", str(root / "correspondence.h5")]))
    assert set(good) >= {"dataset", "protocol", "miou", "per_class", "per_reference", "baselines", "pck", "epe"}
    assert good["dataset"] == "synthetic" and good["protocol"] == "paper"
    assert good["references"] == [f"{i:06d}.png" for i in range(5)] and good["queries"] == 1
    assert len(good["per_reference"]) == 5 and len(good["per_class"]) == 8
    assert good["miou"] > 0.85
    assert good["epe"]["pixels"] == pytest.approx(0.0, abs=1e-6)
    assert good["pck"]["0.1"] > 0.9
    assert good["baselines"]["cosine_nn"]["available"] is False
    ident = good["baselines"]["identity"]["miou"]
    assert ident < good["miou"]
    bad_store = shuffled_copy(root / "correspondence.h5", tmp_path / "shuffled.h5")
    bad = _json(runner.invoke(app, args + ["--store", str(bad_store)]))
    assert bad["miou"] < good["miou"] - 0.2
    assert bad["epe"]["pixels"] > 1.0
    assert bad["pck"]["0.1"] < good["pck"]["0.1"]


def test_pck_identity_is_the_pck_of_a_store_of_pixel_grids(tmp_path):
    """``pck_identity`` (keypoints left at their pixels) equals the PCK of a store holding every image's
    own pixel grid, and a true store beats it: the floor is measured, not assumed."""
    from coordgan_cli.models.warp import canonical_grid_map

    root = make_synthetic(tmp_path / "syn", count=6, size=32)
    args = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--json"]
    good = _json(runner.invoke(app, args + ["--store", str(root / "correspondence.h5")]))
    with StoreReader(root / "correspondence.h5") as reader:
        names, size = list(reader.names), tuple(reader.size)
    grid = canonical_grid_map(*size)[0].numpy()
    with StoreWriter(tmp_path / "grid.h5", size=size, source="model", dtype="float32") as out:
        for name in names:
            out.append(name, grid)
    still = _json(runner.invoke(app, args + ["--store", str(tmp_path / "grid.h5")]))
    assert good["pck_identity"] == still["pck_identity"]
    assert still["pck"] == pytest.approx(good["pck_identity"])
    assert good["pck"]["0.05"] > good["pck_identity"]["0.05"]
    text = runner.invoke(app, args[:-1] + ["--store", str(root / "correspondence.h5")])
    assert text.exit_code == 0 and "(keypoints left in place: @0.05:" in text.stdout


def test_synthetic_fullres_table_and_outputs(tmp_path):
    root = make_synthetic(tmp_path / "syn", count=6, size=32)
    out = tmp_path / "res"
    result = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store",
                                 str(root / "correspondence.h5"), "--protocol", "fullres", "--refs",
                                 "000001,000003.png", "--queries", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "protocol fullres" in result.stdout and "identity" in result.stdout and "mean" in result.stdout
    report = json.loads((out / "results.json").read_text())
    assert report["protocol"] == "fullres" and report["queries"] == 2
    assert report["references"] == ["000001.png", "000003.png"]
    assert list(report["per_reference"]) == ["fused: 000001.png, 000003.png"]
    assert report["miou"] > 0.9
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "class,coordinates,correlation,ensemble,identity,cosine_nn" and csv_lines[-1].startswith("mean,")
    assert "| **mean** |" in (out / "results.md").read_text()
    with Image.open(out / "per_class_iou.png") as img:
        assert img.format == "PNG" and img.width > 100
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_synthetic_errors_name_what_is_missing(tmp_path, monkeypatch):
    # "give --ckpt" is the message of a build without a shipped CoordGAN model (else it is the default).
    monkeypatch.setenv("COORDGAN_SHIPPED_DIR", str(tmp_path / "no-shipped-models"))
    root = make_synthetic(tmp_path / "syn", count=3)
    (root / "masks" / "000001.png").unlink()
    r = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store",
                            str(root / "correspondence.h5")])
    assert r.exit_code == 2 and "000001.png: image without a mask" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(empty), "--store",
                            str(root / "correspondence.h5")])
    assert r.exit_code == 2
    assert "images/" in r.stderr and "masks/" in r.stderr and "labels.json" in r.stderr
    r = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(root)])
    assert r.exit_code == 2 and "give --ckpt" in r.stderr
    r = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(root), "--ckpt", "x.pt"])
    assert r.exit_code == 2 and "--ckpt" in r.stderr


def test_store_missing_rows_listed_in_one_message(tmp_path):
    root = make_synthetic(tmp_path / "syn", count=4)
    with StoreWriter(tmp_path / "part.h5", size=(16, 16), source="model") as w:
        w.append("000000.png", np.zeros((2, 16, 16), np.float32))
    r = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store",
                            str(tmp_path / "part.h5")])
    assert r.exit_code == 2
    assert "no map for 3 benchmark image(s)" in r.stderr and "000003.png" in r.stderr


# ------------------------------------------------------------------------------------------
# DatasetGAN face-34 / car-20


def make_dgan(root: Path, category: str, n_train: int, test_names: list[str], size: int = 12) -> dict[str, int]:
    """A DatasetGAN release tree; returns image name → scene index."""
    train_dir = root / "annotation" / "training_data" / f"{category}_processed"
    test_dir = root / "annotation" / "testing_data" / ("face_34_class" if category == "face" else "car_20_class")
    train_dir.mkdir(parents=True)
    test_dir.mkdir(parents=True)
    index = {}
    for i in range(n_train):
        image, mask, _, _ = scene(i, size, size)
        Image.fromarray(image).save(train_dir / f"image_{i}.jpg")
        np.save(train_dir / f"image_mask{i}.npy", mask.astype(np.int64))
        index[f"annotation/training_data/{category}_processed/image_{i}.jpg"] = i
    for j, name in enumerate(test_names):
        image, mask, _, _ = scene(50 + j, size, size)
        if category == "face":
            mask = np.where(mask == 8, 17, mask).astype(np.uint8)  # some "hair" (excluded class)
        Image.fromarray(image).save(test_dir / name)
        np.save(test_dir / (Path(name).stem + ".npy"), mask.astype(np.int64))
        index[f"{test_dir.relative_to(root).as_posix()}/{name}"] = 50 + j
    return index


def store_for(path: Path, index: dict[str, int], size: int = 12) -> Path:
    with StoreWriter(path, size=(size, size), source="ground-truth", dtype="float32") as w:
        for name, i in index.items():
            w.append(name, scene(i, size, size)[2])
    return path


def test_dgan_face_paper_references_and_stem_pairing(tmp_path):
    root = tmp_path / "dgan"
    make_dgan(root, "face", 12, ["a.png", "b.jpg"])
    bench = load_benchmark("dgan-face", root)
    # The reference code lists .jpg sorted as strings: image_0, image_1, image_10, image_11, image_12.
    assert [Path(r.name).name for r in bench.references] == ["image_0.jpg", "image_1.jpg", "image_10.jpg",
                                                            "image_11.jpg", "image_2.jpg"]
    assert len(bench.queries) == 12 - 5 + 2
    assert bench.num_classes == 34 and bench.exclude == {17, 25}
    # .jpg is listed before .png, but each image keeps its own mask (by stem, not by sort order).
    for q in bench.queries:
        stem = q.image.stem
        expected = f"image_mask{stem[6:]}" if stem.startswith("image_") else stem
        assert q.mask.stem == expected


def test_dgan_face_end_to_end_with_store(tmp_path):
    root = tmp_path / "dgan"
    index = make_dgan(root, "face", 6, ["t0.png", "t1.png"])
    store = store_for(tmp_path / "maps.h5", index)
    rep = _json(runner.invoke(app, ["evaluate", "--dataset", "dgan-face", "--root", str(root), "--store",
                                    str(store), "--refs", "image_0,image_3", "--queries", "1", "--json"]))
    assert rep["classes_scored"] == 31 and len(rep["per_class"]) == 31
    assert "hair" not in rep["per_class"] and "neck" not in rep["per_class"]
    assert rep["excluded_classes"] == ["hair", "neck"]
    assert len(rep["per_reference"]) == 2 and rep["queries"] == 1
    assert "pck" not in rep
    # Only 8 of the 31 scored classes exist in these masks; the others score 0 and still count.
    assert 0.15 < rep["miou"] <= 8 / 31 + 1e-9


def test_dgan_errors_missing_tree_and_partner(tmp_path):
    with pytest.raises(UserError) as err:
        load_benchmark("dgan-car", tmp_path)
    msg = err.value.message
    assert "training_data/car_processed/" in msg and "testing_data/car_20_class/" in msg
    root = tmp_path / "car"
    make_dgan(root, "car", 6, ["x.png"])
    (root / "annotation/training_data/car_processed/image_mask3.npy").unlink()
    (root / "annotation/testing_data/car_20_class/x.png").unlink()
    with pytest.raises(UserError) as err:
        load_benchmark("dgan-car", root)
    msg = err.value.message
    assert "image_3.jpg: image without a mask" in msg and "image_mask3.npy" in msg
    assert "x.npy: mask without an image" in msg


def test_dgan_car_classes(tmp_path):
    root = tmp_path / "car"
    make_dgan(root, "car", 5, ["x.png"])
    bench = load_benchmark("dgan-car", root, refs=["image_0", "image_1"], queries=1)
    assert bench.num_classes == 20 and not bench.exclude
    assert [Path(r.name).name for r in bench.references] == ["image_0.jpg", "image_1.jpg"]
    assert Path(bench.queries[0].name).name == "image_2.jpg"


# ------------------------------------------------------------------------------------------
# CelebAMask-HQ


def make_celeba(root: Path, indices: list[int], size: int = 16) -> None:
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for idx in indices:
        Image.fromarray(np.full((size * 2, size * 2, 3), idx * 20 % 255, np.uint8)).save(root / "CelebA-HQ-img" / f"{idx}.jpg")
        folder = root / "CelebAMask-HQ-mask-anno" / str(idx // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        parts = {"skin": (slice(2, 14), slice(2, 14)), "nose": (slice(6, 10), slice(7, 9)),
                 "u_lip": (slice(10, 12), slice(5, 11)), "mouth": (slice(11, 12), slice(6, 10)),
                 "hair": (slice(0, 3), slice(0, 16)), "l_eye": (slice(4, 6), slice(4, 6))}
        for part, region in parts.items():
            arr = np.zeros((size, size, 3), np.uint8)
            arr[region] = 255
            Image.fromarray(arr).save(folder / f"{idx:05d}_{part}.png")


def test_celeba_merge_and_partial_set(tmp_path):
    root = tmp_path / "celeba"
    make_celeba(root, [0, 1, 2, 3])
    bench = load_benchmark("celebamask-hq", root, refs=["0"], queries=2)
    assert bench.class_names == ["background", "mouth", "eye", "brow", "ear", "nose", "skin"]
    assert [r.name for r in bench.references] == ["CelebA-HQ-img/0.jpg"]
    assert [q.name for q in bench.queries] == ["CelebA-HQ-img/1.jpg", "CelebA-HQ-img/2.jpg"]
    mask = merge_celeba_parts(bench.references[0])
    assert mask[3, 3] == 6          # skin
    assert mask[7, 7] == 5          # nose painted over skin
    assert mask[10, 5] == 1 and mask[11, 7] == 1   # lips and mouth → mouth
    assert mask[4, 4] == 2          # eye
    assert mask[0, 0] == 0          # hair is not one of the 7 classes
    store = tmp_path / "maps.h5"
    with StoreWriter(store, size=(16, 16), source="model", dtype="float32") as w:
        for idx in range(4):
            w.append(f"{idx}.jpg", scene(0, 16, 16)[2])  # identical maps: propagation = copying
    rep = _json(runner.invoke(app, ["evaluate", "--dataset", "celebamask-hq", "--root", str(root), "--store",
                                    str(store), "--refs", "0", "--queries", "2", "--json"]))
    assert rep["classes_scored"] == 6
    assert rep["per_class"]["ear"] == 0.0 and rep["per_class"]["brow"] == 0.0  # absent: union 0 → 0
    assert rep["per_class"]["skin"] > 0.9 and rep["per_class"]["nose"] > 0.9


def test_celeba_paper_split_and_missing_files_one_message(tmp_path):
    refs, queries = celeba_paper_split()
    assert refs == ["1.jpg", "100.jpg", "10000.jpg", "10001.jpg", "10003.jpg"]
    assert len(queries) == 100 and queries[0] == sorted(f"{i}.jpg" for i in range(30000))[100]
    root = tmp_path / "celeba"
    make_celeba(root, [1, 100])
    with pytest.raises(UserError) as err:
        load_benchmark("celebamask-hq", root)
    msg = err.value.message
    assert "CelebA-HQ-img/10000.jpg" in msg and "more" in msg and "\n" not in msg
    with pytest.raises(UserError) as err:
        load_benchmark("celebamask-hq", tmp_path / "nothing-here")
    assert "folder not found" in err.value.message


def save_matcher(path: Path, seed: int = 0) -> Path:
    from tiny_checkpoints import make_matcher_checkpoint

    return make_matcher_checkpoint(path, seed)


def test_every_matcher_in_one_table(tmp_path, monkeypatch):
    import coordgan_cli.inference as inference

    # The "no matcher" columns below need a build without the shipped default matcher.
    monkeypatch.setattr(inference, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    root = make_synthetic(tmp_path / "syn", count=4, size=24)
    matcher = save_matcher(tmp_path / "m.pt")
    base = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store", str(root / "correspondence.h5"),
            "--refs", "000000", "--queries", "1"]
    rep = _json(runner.invoke(app, base + ["--matcher-ckpt", str(matcher), "--json"]))
    assert list(rep["matchers"]) == ["coordinates", "correlation", "ensemble"]
    coords = rep["matchers"]["coordinates"]
    assert (coords["miou"], coords["per_class"], coords["per_reference"]) == (rep["miou"], rep["per_class"],
                                                                             rep["per_reference"])
    for name in ("correlation", "ensemble"):
        m = rep["matchers"][name]
        assert 0.0 <= m["miou"] <= 1.0 and set(m["per_class"]) == set(rep["per_class"])
        assert list(m["per_reference"]) == ["000000.png"]
    assert set(rep["baselines"]) == {"identity", "cosine_nn"}
    assert rep["feature_matcher"]["checkpoint"] == str(matcher) and rep["feature_matcher"]["resolution"] == 128
    assert rep["vote"] == {"mode": "soft", "tau": 0.01} == rep["matcher"]
    # The same run again gives the same numbers (fixed weights, no sampling).
    assert _json(runner.invoke(app, base + ["--matcher-ckpt", str(matcher), "--json"]))["matchers"] == rep["matchers"]
    # Without a matcher the two columns are listed as unavailable, with the reason.
    plain = _json(runner.invoke(app, base + ["--json"]))
    assert plain["matchers"]["correlation"]["available"] is False
    assert "--matcher-ckpt" in plain["matchers"]["ensemble"]["reason"]
    assert plain["miou"] == rep["miou"]
    # fullres: one fused reference, every matcher; the table names each column.
    out = tmp_path / "res"
    r = runner.invoke(app, base + ["--matcher-ckpt", str(matcher), "--protocol", "fullres", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for word in ("coordinates", "correlation", "ensemble", "identity", "cosine_nn", "mIoU correlation"):
        assert word in r.stdout
    full = json.loads((out / "results.json").read_text())
    assert list(full["matchers"]["ensemble"]["per_reference"]) == ["fused: 000000.png"]
    assert (out / "results.csv").read_text().splitlines()[0] == "class,coordinates,correlation,ensemble,identity,cosine_nn"


def test_vote_option_and_its_older_name(tmp_path):
    root = make_synthetic(tmp_path / "syn", count=3, size=16)
    base = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--store", str(root / "correspondence.h5"),
            "--refs", "000000", "--queries", "1", "--json"]
    new = _json(runner.invoke(app, base + ["--vote", "hard"]))
    old = _json(runner.invoke(app, base + ["--matcher", "hard"]))
    assert new["vote"]["mode"] == "hard" and new == old
    r = runner.invoke(app, base + ["--matcher", "correlation"])
    assert r.exit_code == 2 and "every matcher in one table" in r.stderr and "--matcher-ckpt" in r.stderr
    r = runner.invoke(app, base + ["--vote", "soft", "--matcher", "hard"])
    assert r.exit_code == 2 and "disagree" in r.stderr
    r = runner.invoke(app, base + ["--vote", "nearest"])
    assert r.exit_code == 2 and "--vote 'nearest'" in r.stderr
    r = runner.invoke(app, base + ["--matcher-ckpt", str(tmp_path / "none.pt")])
    assert r.exit_code == 2 and "--matcher-ckpt" in r.stderr and "not found" in r.stderr
    r = runner.invoke(app, base + ["--fid-real", str(tmp_path)])
    assert r.exit_code == 2 and "--fid-real needs --ckpt" in r.stderr
    # --no-correlation skips the (shipped or given) matcher: its columns say why.
    skipped = _json(runner.invoke(app, base + ["--no-correlation"]))
    for name in ("correlation", "ensemble"):
        assert skipped["matchers"][name]["available"] is False
        assert skipped["matchers"][name]["reason"] == "skipped (--no-correlation)"
    r = runner.invoke(app, base + ["--no-correlation", "--matcher-ckpt", str(tmp_path / "none.pt")])
    assert r.exit_code == 2 and "use one or the other" in r.stderr


class TinyExtractor:
    """Stands in for Inception in CLI tests: 4×4 average-pooled colours (48 features)."""

    def __call__(self, x):
        import torch.nn.functional as F

        return F.adaptive_avg_pool2d(x, 4).flatten(1)


def test_checkpoint_gives_maps_baselines_and_model_metrics(tmp_path, monkeypatch):
    from coordgan_cli.metrics import fid
    from tiny_checkpoints import make_encoder_checkpoint, make_generator_checkpoint, make_images

    monkeypatch.setattr(fid, "load_extractor", lambda device: TinyExtractor())
    gen = make_generator_checkpoint(tmp_path / "g.pt")
    enc = make_encoder_checkpoint(tmp_path / "e.pt", gen)
    root = make_synthetic(tmp_path / "syn", count=3)
    make_images(tmp_path / "real", 5)
    args = ["--device", "cpu", "evaluate", "--dataset", "synthetic", "--root", str(root), "--ckpt", str(enc),
            "--refs", "000000", "--queries", "1", "--json", "--vote", "hard", "--fid-real", str(tmp_path / "real"),
            "--fid-samples", "4", "--fid-cache", str(tmp_path / "cache"), "--perceptual", "random-tiny",
            "--swap-pairs", "3", "--recon-images", "2", "--batch", "3"]
    rep = _json(runner.invoke(app, args))
    assert rep["maps"] == "model e.pt"
    assert set(rep["baselines"]) == {"identity", "cosine_nn"}
    assert 0.0 <= rep["baselines"]["cosine_nn"]["miou"] <= 1.0 and 0.0 <= rep["miou"] <= 1.0
    assert rep["epe"]["pixels_counted"] > 0 and rep["pck"] is not None
    assert rep["fid"]["value"] > 0 and rep["fid"]["samples"] == 4 and rep["fid"]["real_images"] == 5
    assert rep["fid"]["real_cached"] is False and len(list((tmp_path / "cache").iterdir())) == 1
    dis = rep["disentanglement"]
    assert dis["texture_swap"]["pairs"] == 3 and dis["structure_swap"]["mean"] >= 0 and dis["perceptual"] == "random-tiny"
    assert dis["identity"]["available"] is False and "no face-identity model" in dis["identity"]["reason"]
    rec = rep["reconstruction"]
    assert rec["images"] == 2 and rec["names"] == ["000000.png", "000001.png"] and 0 < rec["mse"] < 1
    assert rec["size"] == 32 and rec["perceptual"]["pairs"] == 2
    again = _json(runner.invoke(app, args))  # deterministic; the real statistics now come from the cache
    assert again["fid"]["real_cached"] is True and again["fid"]["value"] == pytest.approx(rep["fid"]["value"], rel=1e-9)
    assert again["disentanglement"] == dis and again["reconstruction"] == rec
    # Another seed samples other images (the reconstruction of real images stays); the text report
    # states every model metric.
    text = runner.invoke(app, ["--seed", "1"] + [a for a in args if a != "--json"] + ["--out", str(tmp_path / "o")])
    assert text.exit_code == 0, text.output
    for word in ("FID", "texture swap", "structure swap", "identity: unavailable", "reconstruction", "MSE"):
        assert word in text.stdout
    other = json.loads((tmp_path / "o" / "results.json").read_text())
    assert other["fid"]["value"] != rep["fid"]["value"] and other["reconstruction"] == rec
    assert "FID" in (tmp_path / "o" / "results.md").read_text()
    # fullres: cosine nearest neighbour over the references pooled, at native resolution.
    full = _json(runner.invoke(app, ["--device", "cpu", "evaluate", "--dataset", "synthetic", "--root", str(root),
                                     "--ckpt", str(enc), "--refs", "000000", "--queries", "1", "--json",
                                     "--protocol", "fullres", "--swap-pairs", "0", "--recon-images", "0",
                                     "--no-correlation"]))
    assert set(full["baselines"]) == {"identity", "cosine_nn"} and 0.0 <= full["baselines"]["cosine_nn"]["miou"] <= 1.0


def test_generator_checkpoint_needs_a_store_and_gives_generation_metrics(tmp_path):
    from tiny_checkpoints import make_generator_checkpoint

    gen = make_generator_checkpoint(tmp_path / "g.pt")
    root = make_synthetic(tmp_path / "syn", count=3)
    base = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--ckpt", str(gen), "--refs", "000000",
            "--queries", "1", "--json", "--perceptual", "random-tiny", "--swap-pairs", "2"]
    r = runner.invoke(app, base)
    assert r.exit_code == 2 and "generator checkpoint gives no maps" in r.stderr and "--store" in r.stderr
    rep = _json(runner.invoke(app, base + ["--store", str(root / "correspondence.h5")]))
    assert rep["maps"] == "store correspondence.h5" and rep["miou"] > 0.5
    assert rep["disentanglement"]["texture_swap"]["pairs"] == 2
    assert rep["reconstruction"]["available"] is False and "encoder" in rep["reconstruction"]["reason"]
    assert rep["fid"]["available"] is False and "--fid-real" in rep["fid"]["reason"]
    assert rep["baselines"]["cosine_nn"]["available"] is False
