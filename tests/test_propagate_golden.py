"""``coordgan propagate`` outputs are byte-identical to those of the code before the labelling core
(``coordgan_cli.labelling``) replaced the 249-line command function.

The digests below were recorded by running this file's ``_digests`` against the old command
(commit 356d885) on the same tiny deterministic inputs: every output file's bytes (label PNGs,
overlays, confidence pictures, annotations.json, keypoints.json, labels.json, report.html with the
temporary folder's path taken out), the per-query records of progress.jsonl (its first line is a
settings key that holds absolute paths), the labels/confidence per store row (once written back
into the store; now into OUT/labels.h5 — same arrays, and the store is left untouched), and the
JSON summary without its timing. Regenerate with ``python tests/test_propagate_golden.py`` only
for an intended change of outputs, and say so in the CHANGELOG. (e.png, 32², has no row: its labels
are not at the store's 24² size. Before OUT/labels.h5 the store held an all-zero row 3 for it.)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordgan_cli.cli import app  # noqa: E402
from coordgan_cli.io.coco import mask_annotations, write_coco  # noqa: E402
from coordgan_cli.io.images import write_image  # noqa: E402
from coordgan_cli.io.masks import labels_from_names, write_labels, write_mask  # noqa: E402
from coordgan_cli.io.store import StoreReader, StoreWriter  # noqa: E402

from test_vote import parts_mask, smooth_warp  # noqa: E402
from tiny_checkpoints import (make_encoder_checkpoint, make_generator_checkpoint,  # noqa: E402
                              make_matcher_checkpoint, tiny_recipe)

LABELS = labels_from_names(["background", "face", "hair", "left_eye", "right_eye"])
SIZE = 24


def _image(cmap: np.ndarray, seed: int) -> np.ndarray:
    x, y = cmap
    rgb = np.stack([(x + 1) * 110, (y + 1) * 110, parts_mask(cmap) * 50.0], axis=-1)
    rgb += np.random.default_rng(seed).normal(0, 4, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_inputs(root: Path) -> Path:
    """24² images a, b, sub/c in a store with maps; e.png 32² (its 24² map is resampled); a matcher
    checkpoint, a tiny encoder checkpoint, a pairs file, a COCO export and COCO keypoints."""
    write_labels(root / "set" / "labels.json", LABELS)
    with StoreWriter(root / "set" / "maps.h5", size=(SIZE, SIZE), source="ground-truth", with_valid=True) as store:
        for seed, name in enumerate(["a.png", "b.png", "sub/c.png", "e.png"]):
            cmap = smooth_warp(SIZE, seed)
            store.append(name, cmap, valid=np.ones((SIZE, SIZE), bool))
            picture = cmap
            if name == "e.png":
                big = np.stack([np.kron(c, np.ones((3, 3)))[1:-1:2, 1:-1:2] for c in cmap])
                picture = big[:, :32, :32]
            write_image(root / "set" / "images" / name, _image(picture, seed))
            write_mask(root / "set" / "masks" / Path(name).name, parts_mask(cmap), LABELS)
    make_matcher_checkpoint(root / "matcher.pt", seed=3)
    # The tiny model as it was when the digests were recorded: before issue 14 gave the warp
    # MLP its identity skip (model.warp_skip, on by default since).
    generator = make_generator_checkpoint(root / "generator.pt", seed=4,
                                          recipe=tiny_recipe(**{"model.warp_skip": "false"}))
    make_encoder_checkpoint(root / "encoder.pt", generator, seed=5)
    write_coco(root / "export.json", [{"id": 7, "file_name": "project/a.png", "height": SIZE, "width": SIZE}],
               mask_annotations(parts_mask(smooth_warp(SIZE, 0)), 7, 1), LABELS)
    (root / "pairs.txt").write_text("set/images/a.png set/masks/a.png\nset/images/b.png,set/masks/b.png\n")
    (root / "kp.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE},
                   {"id": 2, "file_name": "b.png", "height": SIZE, "width": SIZE}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [12, 12, 2, 5, 20, 2, 0, 0, 0]},
                        {"id": 2, "image_id": 2, "category_id": 1, "keypoints": [10, 11, 2, 0, 0, 0, 3, 4, 2]}],
        "categories": [{"id": 1, "name": "thing", "keypoints": ["centre", "corner", "hidden"], "skeleton": []}]}))
    return root


def _runs(root: Path) -> dict[str, list[str]]:
    s = root / "set"
    a = ["--ref", s / "images/a.png", "--mask", s / "masks/a.png"]
    return {
        "coordinates": ["--store", s / "maps.h5", *a, "--queries", s / "images"],
        "hard_pairs_keypoints": ["--store", s / "maps.h5", "--refs", root / "pairs.txt", "--queries", s / "images",
                                 "--mode", "hard", "--min-confidence", "0.9", "--polygons",
                                 "--ref-keypoints", root / "kp.json", "--tau", "0.05"],
        "soft_keypoints": ["--store", s / "maps.h5", "--refs", root / "pairs.txt", "--queries", s / "images",
                           "--ref-keypoints", root / "kp.json", "--min-confidence", "0.6"],
        "ref_coco": ["--store", s / "maps.h5", "--ref", s / "images/a.png", "--ref-coco", root / "export.json",
                     "--queries", s / "images"],
        "coordinates_model": ["--ckpt", root / "encoder.pt", *a, "--queries", s / "images", "--mode", "hard"],
        "correlation": [*a, "--queries", s / "images", "--matcher", "correlation", "--matcher-ckpt",
                        root / "matcher.pt"],
        # --work-size 0: the old code ran the matcher at each image's own size (the default is now
        # its training size, tested in test_work_size.py).
        "correlation_shipped": [*a, "--queries", s / "images", "--matcher", "correlation", "--work-size", "0"],
        "ensemble": ["--store", s / "maps.h5", *a, "--ref", s / "images/sub/c.png", "--mask", s / "masks/c.png",
                     "--queries", s / "images", "--matcher", "ensemble", "--matcher-ckpt", root / "matcher.pt",
                     "--report-limit", "2"],
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _digests(root: Path, name: str, args: list, out: Path) -> dict[str, str]:
    """Run one propagate configuration into ``out``; sha256 of everything it wrote."""
    result = CliRunner().invoke(app, ["--quiet", "--device", "cpu", "propagate", *map(str, args), "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    summary.pop("seconds")
    summary["outputs"] = {k: str(Path(v).relative_to(out)) for k, v in summary["outputs"].items()}
    # Since maps read from a store no longer write into it, their labels go to OUT/labels.h5
    # (a new output, so it is checked here and the recorded summary stays as it was).
    assert summary["outputs"].pop("labels_h5", None) == ("labels.h5" if "--store" in args else None)
    digests = {"summary": _sha(json.dumps(summary, sort_keys=True).encode())}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = str(path.relative_to(out))
        if rel == "labels.h5":
            continue  # HDF5 bytes hold timestamps: its arrays are compared below
        if rel == "run.json":
            continue  # written since (for `suggest --from-run`); it holds absolute paths, so no fixed digest
        data = path.read_bytes()
        if rel == "progress.jsonl":
            data = b"".join(data.splitlines(keepends=True)[1:])
        elif rel == "report.html":
            data = data.replace(str(root).encode(), b"ROOT")
        digests[rel] = _sha(data)
    if "--store" in args:
        # Keyed by the row of the name in the input store, as when they were written back there.
        with StoreReader(root / "set" / "maps.h5") as store, h5py.File(out / "labels.h5", "r") as written:
            assert not store.has("labels") and not store.has("confidence")
            for i, name in enumerate(written["names"][: written.attrs["complete"]]):
                row = store.index(name.decode())
                for key in ("labels", "confidence"):
                    digests[f"store/{key}/{row}"] = _sha(np.ascontiguousarray(written[key][i]).tobytes())
    return digests


EXPECTED: dict[str, dict[str, str]] = {
    "coordinates": {
        "annotations.json": "a20fd1c7f974bf0413f7",
        "confidence/a.png": "fa8d09d7baed51edd5e4",
        "confidence/b.png": "054a3a88d8bc94db2414",
        "confidence/e.png": "bb62c43cdd0c34a147bb",
        "confidence/sub/c.png": "31cb0c85037842c8d5c4",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "5929fd5a73eb938acae1",
        "labels/b.png": "dc7ad8e165f14955e531",
        "labels/e.png": "e3445d03be39dd17b3e4",
        "labels/sub/c.png": "e4a791212c22f03fab8c",
        "overlays/a.jpg": "1b36db0e687e05f23990",
        "overlays/b.jpg": "ab1357a577b98019fc96",
        "overlays/e.jpg": "ea214362ac3267d3e1a9",
        "overlays/sub/c.jpg": "3ce3306bc684fbc22b36",
        "progress.jsonl": "5fbfde066f95ccac697d",
        "report.html": "f3bed8f308990d52c46c",
        "store/confidence/0": "dd018dace47cb350861e",
        "store/confidence/1": "586b34026c70d9a51786",
        "store/confidence/2": "cec95b40c86137f30c39",
        "store/labels/0": "350a26277346238f3825",
        "store/labels/1": "160ddf57264aea63e32b",
        "store/labels/2": "80ea46e9438bb369d501",
        "summary": "bcb93030f85b59cb953b"
    },
    "coordinates_model": {
        "annotations.json": "71659ba1042f045158bf",
        "confidence/a.png": "485228fa1fc206f0808d",
        "confidence/b.png": "485228fa1fc206f0808d",
        "confidence/e.png": "3430544c377542d67c84",
        "confidence/sub/c.png": "485228fa1fc206f0808d",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "5929fd5a73eb938acae1",
        "labels/b.png": "1fdfc4fffec2c8a6b352",
        "labels/e.png": "bc7fef9230dbf5fa1abc",
        "labels/sub/c.png": "6a64ddfbf084b829cd46",
        "overlays/a.jpg": "1b36db0e687e05f23990",
        "overlays/b.jpg": "12f29405317282e6e7c2",
        "overlays/e.jpg": "b697275ac989571e803a",
        "overlays/sub/c.jpg": "b3aba8d3e7da1d559934",
        "progress.jsonl": "658e6697f960b7253bfb",
        "report.html": "f5f69afc4ad9598c193a",
        "summary": "b915b3115defe849f4c3"
    },
    "correlation": {
        "annotations.json": "8e76126635fa36d52f0f",
        "confidence/a.png": "e2b617a9871d487fd933",
        "confidence/b.png": "42f4de9fff01051cdab5",
        "confidence/e.png": "9d01cbb68a596fdc637f",
        "confidence/sub/c.png": "38f0bc5f575d72fd5a6d",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "fe39abdd82ef6cd3af0e",
        "labels/b.png": "430b0fa4021fa2a2a664",
        "labels/e.png": "ef6d354ce11a80cb5295",
        "labels/sub/c.png": "5dc105f3f776c0fa0a96",
        "overlays/a.jpg": "637f4ef0b13799073179",
        "overlays/b.jpg": "61491ab8b8d4b60c7191",
        "overlays/e.jpg": "31401979667e97578c4d",
        "overlays/sub/c.jpg": "1f7cd4c6402f5a6bc82e",
        "progress.jsonl": "e7f1f9ecd718f0cd66a2",
        "report.html": "6c4dddd5521b403ea3d4",
        "summary": "faa7f59306889372b13f"
    },
    "correlation_shipped": {
        "annotations.json": "6f4522682b1bf6565d67",
        "confidence/a.png": "51a4c3b4f4bdfe8402c1",
        "confidence/b.png": "41a3bc7749549ae3d7fa",
        "confidence/e.png": "c3579005c2ba44930a82",
        "confidence/sub/c.png": "d846ac9c5d7135060680",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "5929fd5a73eb938acae1",
        "labels/b.png": "0a377ec8b250aeccdc98",
        "labels/e.png": "823e75fc129484f77163",
        "labels/sub/c.png": "37b4cd61c1a662652dfb",
        "overlays/a.jpg": "1b36db0e687e05f23990",
        "overlays/b.jpg": "ac4c44b8c7d586ead771",
        "overlays/e.jpg": "324f70ec11a17244dbe4",
        "overlays/sub/c.jpg": "c590b5764a8005ee2cd4",
        "progress.jsonl": "a45841e4acf3aa2be969",
        "report.html": "c0852a34ffe3b3fb9657",
        "summary": "bcb4969cb99028ce701f"
    },
    "ensemble": {
        "annotations.json": "34b291667b6c59468029",
        "confidence/a.png": "f0dd46a97a1d48f25d11",
        "confidence/b.png": "e4b3078ae7feb7b34c8a",
        "confidence/e.png": "0d60db7127f16e8f56ce",
        "confidence/sub/c.png": "8cfed86f54a7d3231b03",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "39efb8bafba528e24966",
        "labels/b.png": "d661a9e30d002047faf6",
        "labels/e.png": "c1819c49628b73c3b13b",
        "labels/sub/c.png": "a6858674008795f7b455",
        "overlays/a.jpg": "4c3ef721644e3ed2a639",
        "overlays/b.jpg": "4d4c57ddeb1379dae3cc",
        "overlays/e.jpg": "b16b01d5c6de0914ac2d",
        "overlays/sub/c.jpg": "e33ee29703da0e88ac16",
        "progress.jsonl": "dded3bc78e006e315a95",
        "report.html": "5049b698602f487af8b4",
        "store/confidence/0": "7bdd83944df7ad360662",
        "store/confidence/1": "66f0f5a9470a8d6ff6f0",
        "store/confidence/2": "293ef143507dae31518f",
        "store/labels/0": "8fb58eaed2d5c9314b77",
        "store/labels/1": "635d8f8ce3431d136bdb",
        "store/labels/2": "c521c44db3a42fc40b30",
        "summary": "034aae03be10d51376c0"
    },
    "hard_pairs_keypoints": {
        "annotations.json": "0ec319db71822dc4edb4",
        "confidence/a.png": "432faf05cbd7be05169d",
        "confidence/b.png": "ef619792aeb943698b35",
        "confidence/e.png": "d88e2a9688bd2654b050",
        "confidence/sub/c.png": "d1967642f0bcab80f52a",
        "keypoints.json": "dc9ba8778567e7e2298f",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "eb820f2b33ef8f419684",
        "labels/b.png": "394da57088ed3402d2aa",
        "labels/e.png": "2eaabf90504a89c5fc65",
        "labels/sub/c.png": "6a403cc948d6a464c11b",
        "overlays/a.jpg": "826d815d32441e0decbb",
        "overlays/b.jpg": "52d5ee889559c3f0fc2d",
        "overlays/e.jpg": "5b101b3571894641c3b0",
        "overlays/sub/c.jpg": "dfb22546f1213f5ecc72",
        "progress.jsonl": "47acd318e640a9c2d5dc",
        "report.html": "da65fe47036f252c2174",
        "store/confidence/0": "e47d3a13cdb7618207cf",
        "store/confidence/1": "6529c0331e4097444550",
        "store/confidence/2": "aa6ff96f18322fd34525",
        "store/labels/0": "c9fe3490869519e63d98",
        "store/labels/1": "14045ad73c46328bab14",
        "store/labels/2": "200f95efa58c1f8a85de",
        "summary": "1c1b38af7d3b4f5bb57a"
    },
    "ref_coco": {
        "annotations.json": "a20fd1c7f974bf0413f7",
        "confidence/a.png": "fa8d09d7baed51edd5e4",
        "confidence/b.png": "054a3a88d8bc94db2414",
        "confidence/e.png": "bb62c43cdd0c34a147bb",
        "confidence/sub/c.png": "31cb0c85037842c8d5c4",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "5929fd5a73eb938acae1",
        "labels/b.png": "dc7ad8e165f14955e531",
        "labels/e.png": "e3445d03be39dd17b3e4",
        "labels/sub/c.png": "e4a791212c22f03fab8c",
        "overlays/a.jpg": "1b36db0e687e05f23990",
        "overlays/b.jpg": "ab1357a577b98019fc96",
        "overlays/e.jpg": "ea214362ac3267d3e1a9",
        "overlays/sub/c.jpg": "3ce3306bc684fbc22b36",
        "progress.jsonl": "5fbfde066f95ccac697d",
        "report.html": "f3bed8f308990d52c46c",
        "store/confidence/0": "dd018dace47cb350861e",
        "store/confidence/1": "586b34026c70d9a51786",
        "store/confidence/2": "cec95b40c86137f30c39",
        "store/labels/0": "350a26277346238f3825",
        "store/labels/1": "160ddf57264aea63e32b",
        "store/labels/2": "80ea46e9438bb369d501",
        "summary": "bcb93030f85b59cb953b"
    },
    "soft_keypoints": {
        "annotations.json": "b7310fc9cee10e3519b2",
        "confidence/a.png": "f1677d9bf63f756f190a",
        "confidence/b.png": "2e11e12465c1ba8a3612",
        "confidence/e.png": "59aeff525ebe914b5a63",
        "confidence/sub/c.png": "519eaa903b2aeaf4f1fa",
        "keypoints.json": "50f022a315d78cbcae9e",
        "labels.json": "f4b508eafe026515e282",
        "labels/a.png": "4e3344e386039dda1138",
        "labels/b.png": "e131ee340ac67b790ddb",
        "labels/e.png": "1714d1c16dc2fbddab4c",
        "labels/sub/c.png": "194b2d691e0d7edf900c",
        "overlays/a.jpg": "edf0dc77b54eee19a28f",
        "overlays/b.jpg": "275cf52c9df642a16b51",
        "overlays/e.jpg": "9dd20a992cea6c28eb4c",
        "overlays/sub/c.jpg": "df8664239aed1a1a5635",
        "progress.jsonl": "403313beff9fa7e6ba6e",
        "report.html": "52d5584d2d8f7b1d55e0",
        "store/confidence/0": "2856340484c02bb122a2",
        "store/confidence/1": "b50c69c223a98feeeca0",
        "store/confidence/2": "615139e6fc3373f2b938",
        "store/labels/0": "f1e3c7554faecf86c75f",
        "store/labels/1": "73c6e200f9537e096cb9",
        "store/labels/2": "5c1eea6e6dd7bab2c429",
        "summary": "43c1ee806c194348b991"
    }
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outputs_identical_to_before_the_core(name: str, tmp_path: Path) -> None:
    root = make_inputs(tmp_path)
    assert _digests(root, name, _runs(root)[name], tmp_path / "out") == EXPECTED[name]


if __name__ == "__main__":  # record: python tests/test_propagate_golden.py > digests.json
    import tempfile

    recorded = {}
    for config in _runs(Path("/x")):
        with tempfile.TemporaryDirectory() as tmp:
            root = make_inputs(Path(tmp))
            recorded[config] = _digests(root, config, _runs(root)[config], Path(tmp) / "out")
    print(json.dumps(recorded, indent=4, sort_keys=True))
