"""``coordgan evaluate --json`` numbers are identical to those of the code before the evaluation core
(``coordgan_cli.evaluation``) replaced the 661-line command module and its own matcher code paths.

The digests below were recorded by running this file's ``_digests`` against the old command
(commit 61dc51e) on tiny deterministic inputs: a synthetic set (``make_synthetic``) with its
ground-truth store, a second store of coarser maps (resampled on use), a tiny matcher checkpoint,
the shipped matcher and a tiny encoder checkpoint; both protocols, both votes. Each JSON report is
digested key by key (paths of the temporary folder replaced), plus the files ``--out`` writes for
one run. Regenerate with ``python tests/test_evaluate_golden.py`` only for an intended change of
numbers, and say so in the CHANGELOG.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

import coordgan_cli  # noqa: E402
from coordgan_cli.cli import app  # noqa: E402
from coordgan_cli.io.checkpoint import file_sha256  # noqa: E402
from coordgan_cli.io.store import StoreWriter  # noqa: E402

from test_evaluate import make_synthetic, scene  # noqa: E402
from tiny_checkpoints import (make_encoder_checkpoint, make_generator_checkpoint,  # noqa: E402
                              make_matcher_checkpoint, tiny_recipe)

PACKAGE = str(Path(coordgan_cli.__file__).resolve().parent)  # the shipped matcher's path varies by checkout


def make_inputs(root: Path) -> Path:
    """6 synthetic 24² images with their 24² truth store, a 16² store of the same scenes, a tiny
    matcher and a tiny encoder checkpoint."""
    make_synthetic(root / "syn", count=6, size=24)
    with StoreWriter(root / "coarse.h5", size=(16, 16), source="model", dtype="float32", with_valid=True) as store:
        for i in range(6):
            _image, mask, cmap, _kp = scene(i, 16, 16)
            store.append(f"{i:06d}.png", cmap, valid=mask > 0)
    make_matcher_checkpoint(root / "matcher.pt", seed=3)
    # The tiny model as it was when the digests were recorded: before issue 14 gave the warp
    # MLP its identity skip (model.warp_skip, on by default since).
    generator = make_generator_checkpoint(root / "generator.pt", seed=4,
                                          recipe=tiny_recipe(**{"model.warp_skip": "false"}))
    make_encoder_checkpoint(root / "encoder.pt", generator, seed=5)
    return root


def _runs(root: Path) -> dict[str, list]:
    syn = root / "syn"
    base = ["evaluate", "--dataset", "synthetic", "--root", syn, "--refs", "000000,000002", "--queries", "3"]
    truth, coarse = ["--store", syn / "correspondence.h5"], ["--store", root / "coarse.h5"]
    matcher = ["--matcher-ckpt", root / "matcher.pt"]
    model = ["--ckpt", root / "encoder.pt", "--swap-pairs", "0", "--recon-images", "0"]
    return {
        "store_paper_matcher": [*base, *truth, *matcher],
        "store_fullres_matcher_out": [*base, *truth, *matcher, "--protocol", "fullres", "--out", root / "res"],
        # --work-size 0: the old code ran the matcher at the images' own (protocol) size; the default
        # is now the shipped matcher's training size (tests/test_work_size.py).
        "coarse_paper_shipped": [*base, *coarse, "--tau", "0.05", "--work-size", "0"],
        "coarse_fullres_shipped": [*base, *coarse, "--protocol", "fullres", "--work-size", "0"],
        "coarse_fullres_hard": [*base, *coarse, "--protocol", "fullres", "--vote", "hard", "--no-correlation"],
        "store_paper_hard": [*base, *truth, "--vote", "hard", "--no-correlation"],
        "default_split_fullres": ["evaluate", "--dataset", "synthetic", "--root", syn, *coarse, *matcher,
                                  "--protocol", "fullres", "--vote", "hard"],
        "model_paper_matcher": [*base, *model, *matcher],
        "model_fullres_matcher": [*base, *model, *matcher, "--protocol", "fullres"],
        "model_store_fullres": [*base, *model, *coarse, "--protocol", "fullres", "--no-correlation"],
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _digests(root: Path, args: list) -> dict[str, str]:
    """Run one evaluate configuration; sha256 of each key of its JSON report (and of its files)."""
    result = CliRunner().invoke(app, ["--quiet", "--device", "cpu", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    # The tiny matcher's file bytes vary between writes (torch.save names its records after the
    # temporary file), so its digest is a placeholder; the shipped matcher's stays.
    text = (result.stdout.replace(str(root), "ROOT").replace(PACKAGE, "PACKAGE")
            .replace(file_sha256(root / "matcher.pt"), "MATCHER_SHA256"))
    report = json.loads(text)
    # "work_size" joined the report after the recording; None is the old path (the images' own size).
    assert report["feature_matcher"].pop("work_size", None) is None
    # "pck_identity" (the PCK of keypoints left at their pixels) joined it later too; it is checked
    # in tests/test_evaluate.py, and its line in results.md is left out of that file's digest.
    report.pop("pck_identity", None)
    digests = {f"json/{k}": _sha(json.dumps(v, sort_keys=True).encode()) for k, v in report.items()}
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        # results.json is the report above (its tiny matcher's sha256 varies); the others are digested.
        for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "results.json"):
            data = path.read_bytes().replace(str(root).encode(), b"ROOT")
            if path.name == "results.md":
                data = re.sub(rb"\n\n- pck_identity: [^\n]*", b"", data)
            digests[f"out/{path.relative_to(out)}"] = _sha(data)
    return digests


EXPECTED: dict[str, dict[str, str]] = {
    "coarse_fullres_hard": {
        "json/baselines": "42c041d29021cd356a7c",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "c1025a8ea3b4277d45f7",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "b2ad5cee5fc154d15d5d",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "26d120a9549c2e7f0efc",
        "json/matcher": "4123fac258bed6a71a20",
        "json/matchers": "fb57f9edeca494f0f6a4",
        "json/miou": "fd607fad67b1cd776e08",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "4360ded44393d851e7a8",
        "json/per_reference": "a8431e794c758ae126cf",
        "json/protocol": "2e2fc2eb34244e8dd53f",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "4333d880d7e2f1bfe343",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "4123fac258bed6a71a20"
    },
    "coarse_fullres_shipped": {
        "json/baselines": "42c041d29021cd356a7c",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "c1025a8ea3b4277d45f7",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "8ec8db004805aa50350b",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "26d120a9549c2e7f0efc",
        "json/matcher": "47d91431d0f39933b187",
        "json/matchers": "281273211e852d9c664f",
        "json/miou": "5d37582f75888fa99f37",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "6c88520c1d47ae7b85f7",
        "json/per_reference": "30c0327a67c3284d0791",
        "json/protocol": "2e2fc2eb34244e8dd53f",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "4333d880d7e2f1bfe343",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "47d91431d0f39933b187"
    },
    "coarse_paper_shipped": {
        "json/baselines": "1b5fce50213f0ad8b717",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "c1025a8ea3b4277d45f7",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "2cfd08729464c3fba442",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "26d120a9549c2e7f0efc",
        "json/matcher": "784acf99608787074447",
        "json/matchers": "fed90b3f23c5fe41affc",
        "json/miou": "04f0b01d61a924f3cd18",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "7a57eb97b5e933949f73",
        "json/per_reference": "acfea90db053163604fc",
        "json/protocol": "9d53f79e7113d46cd361",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "2747b7c718564ba5f066",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "784acf99608787074447"
    },
    "default_split_fullres": {
        "json/baselines": "50be150440267280e345",
        "json/choice": "a29c0f020ee60917ae36",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "d40c993e2b73f60671f1",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "638b789e131895f269ee",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "26d120a9549c2e7f0efc",
        "json/matcher": "4123fac258bed6a71a20",
        "json/matchers": "158404153646149e5625",
        "json/miou": "451219755bb0181c2b09",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "1a6562590ef19d1045d0",
        "json/pck_pairs": "ef2d127de37b942baad0",
        "json/per_class": "621c50f54730bd3b238e",
        "json/per_reference": "da0ed5720452affb244e",
        "json/protocol": "2e2fc2eb34244e8dd53f",
        "json/queries": "6b86b273ff34fce19d6b",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "62a5e078ea95e14d7649",
        "json/resolution": "4333d880d7e2f1bfe343",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "4123fac258bed6a71a20"
    },
    "model_fullres_matcher": {
        "json/baselines": "947add6e3fdd4e19fd87",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "afc2377cb25cfc6201c4",
        "json/epe": "d7c73808dc7ef7cadd85",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "638b789e131895f269ee",
        "json/fid": "d837a52453115cf42f45",
        "json/maps": "b73cd28c1d51850257fa",
        "json/matcher": "47d91431d0f39933b187",
        "json/matchers": "7de3091d0b522e61d2ba",
        "json/miou": "8aed642bf5118b9d3c85",
        "json/pck": "f2df03cde330dce5c4fb",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "b260c1076d9b74c24d56",
        "json/per_reference": "c6b3b939c3f610c79040",
        "json/protocol": "2e2fc2eb34244e8dd53f",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "e8a1f748b508ee68e33a",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "4333d880d7e2f1bfe343",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "47d91431d0f39933b187"
    },
    "model_paper_matcher": {
        "json/baselines": "60a574aaf7cb84d65dd1",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "afc2377cb25cfc6201c4",
        "json/epe": "d7c73808dc7ef7cadd85",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "263c97685f88507e575e",
        "json/fid": "d837a52453115cf42f45",
        "json/maps": "b73cd28c1d51850257fa",
        "json/matcher": "47d91431d0f39933b187",
        "json/matchers": "1cfaaf47465b4d851593",
        "json/miou": "5e5d66c502ac219f6447",
        "json/pck": "f2df03cde330dce5c4fb",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "53ef412d1accce5ae6cf",
        "json/per_reference": "fa679232a1b79fd7b57b",
        "json/protocol": "9d53f79e7113d46cd361",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "e8a1f748b508ee68e33a",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "2747b7c718564ba5f066",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "47d91431d0f39933b187"
    },
    "model_store_fullres": {
        "json/baselines": "947add6e3fdd4e19fd87",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "afc2377cb25cfc6201c4",
        "json/epe": "c1025a8ea3b4277d45f7",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "b2ad5cee5fc154d15d5d",
        "json/fid": "d837a52453115cf42f45",
        "json/maps": "26d120a9549c2e7f0efc",
        "json/matcher": "47d91431d0f39933b187",
        "json/matchers": "89b9fb3e8c6d73673ea1",
        "json/miou": "5d37582f75888fa99f37",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "6c88520c1d47ae7b85f7",
        "json/per_reference": "30c0327a67c3284d0791",
        "json/protocol": "2e2fc2eb34244e8dd53f",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "e8a1f748b508ee68e33a",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "4333d880d7e2f1bfe343",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "47d91431d0f39933b187"
    },
    "store_fullres_matcher_out": {
        "json/baselines": "42c041d29021cd356a7c",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "841ebbde3600bb2efae8",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "638b789e131895f269ee",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "84e47a2a801039cd127f",
        "json/matcher": "47d91431d0f39933b187",
        "json/matchers": "27dd878410c85ffddec1",
        "json/miou": "578b326ccbddd7638cfd",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "5f9528a1aa08ae4c905e",
        "json/per_reference": "a5563dd8d0b350b96662",
        "json/protocol": "2e2fc2eb34244e8dd53f",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "4333d880d7e2f1bfe343",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "47d91431d0f39933b187",
        "out/per_class_iou.png": "5483736a4bd2a12eb711",
        "out/results.csv": "c7e3e3d06f9756b2101c",
        "out/results.md": "96fbed94b7299acc1db5"
    },
    "store_paper_hard": {
        "json/baselines": "1b5fce50213f0ad8b717",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "841ebbde3600bb2efae8",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "b2ad5cee5fc154d15d5d",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "84e47a2a801039cd127f",
        "json/matcher": "4123fac258bed6a71a20",
        "json/matchers": "9a2f127d0b13865d2ba4",
        "json/miou": "a140a2f11b61bc379874",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "51e5822fb61ead47311f",
        "json/per_reference": "12a74e9883df15086d07",
        "json/protocol": "9d53f79e7113d46cd361",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "2747b7c718564ba5f066",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "4123fac258bed6a71a20"
    },
    "store_paper_matcher": {
        "json/baselines": "1b5fce50213f0ad8b717",
        "json/choice": "6c32260b0998e0e31052",
        "json/classes_scored": "2c624232cdd221771294",
        "json/dataset": "85da8434c70bf817c2ac",
        "json/disentanglement": "fdebd48659e67ca6a268",
        "json/epe": "841ebbde3600bb2efae8",
        "json/excluded_classes": "4f53cda18c2baa0c0354",
        "json/feature_matcher": "263c97685f88507e575e",
        "json/fid": "413f6c173db0f11c81a0",
        "json/maps": "84e47a2a801039cd127f",
        "json/matcher": "47d91431d0f39933b187",
        "json/matchers": "bb43d61e4dbfb428cb5f",
        "json/miou": "7c335292e0b38ed6fe76",
        "json/pck": "f0c91f15a51c0e149c0b",
        "json/pck_keypoints": "39fa9ec190eee7b6f4df",
        "json/pck_pairs": "e7f6c011776e8db7cd33",
        "json/per_class": "fea81d72442207cbb05b",
        "json/per_reference": "7f4dc992b30b220de110",
        "json/protocol": "9d53f79e7113d46cd361",
        "json/queries": "4e07408562bedb8b60ce",
        "json/reconstruction": "82aaed0bd3faa0e1436c",
        "json/references": "76e621e7ab2fd6d5fb59",
        "json/resolution": "2747b7c718564ba5f066",
        "json/values": "9175f9a38229dadecc2f",
        "json/vote": "47d91431d0f39933b187"
    }
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("golden"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_numbers_identical_to_before_the_core(name: str, inputs: Path) -> None:
    assert _digests(inputs, _runs(inputs)[name]) == EXPECTED[name]


if __name__ == "__main__":  # record: python tests/test_evaluate_golden.py > digests.json
    import tempfile

    recorded = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_inputs(Path(tmp))
        for config, args in _runs(root).items():
            recorded[config] = _digests(root, args)
    print(json.dumps(recorded, indent=4, sort_keys=True))
