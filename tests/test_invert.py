"""coordgan invert: store layout and round trip, kill -9 + rerun, shards + merge, stdin lists,
corrupt images, --full, and the mismatch errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.inference import load_correspondence_model
from coordgan_cli.io.checkpoint import file_sha256
from coordgan_cli.io.images import read_image
from coordgan_cli.io.store import StoreReader

from tiny_checkpoints import ROOT, make_encoder_checkpoint, make_generator_checkpoint, make_images

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("invert")
    gen = make_generator_checkpoint(d / "gen.pt")
    enc = make_encoder_checkpoint(d / "enc.pt", gen)
    imgs = d / "imgs"
    make_images(imgs, 9)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return {"gen": gen, "enc": enc, "imgs": imgs, "dir": d}


def _invert(*args: str, input: str | None = None):
    return runner.invoke(app, ["--quiet", "--device", "cpu", "invert", *args], input=input)


def _rows(path: Path) -> tuple[list[str], list[np.ndarray]]:
    with StoreReader(path) as r:
        return list(r.names), [r.correspondence(i) for i in range(len(r))]


def test_store_layout_round_trip_and_corrupt_image(setup, tmp_path):
    out = tmp_path / "maps.h5"
    res = _invert(str(setup["enc"]), str(setup["imgs"]), "--out", str(out), "--batch-size", "4", "--json",
                  "--preview", str(tmp_path / "prev"))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["count"] == 9 and summary["rows"] == 9
    assert [s["name"] for s in summary["skipped"]] == ["broken.png"]
    assert "cannot decode" in summary["skipped"][0]["reason"]
    side = json.loads((tmp_path / "maps.skipped.json").read_text())
    assert side["skipped"][0]["name"] == "broken.png"
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "coordgan.correspondence" and f.attrs["version"] == 1
        assert f.attrs["source"] == "model" and list(f.attrs["size"]) == [32, 32]
        assert f.attrs["checkpoint_sha256"] == file_sha256(setup["enc"])
        assert json.loads(f.attrs["config"])["model"]["size"] == 32
        assert f["correspondence"].shape == (9, 2, 32, 32) and f["correspondence"].dtype == np.float16
        assert "structure" not in f and "texture" not in f
    names, maps = _rows(out)
    expected = sorted(p.relative_to(setup["imgs"]).as_posix() for p in setup["imgs"].rglob("img*.png"))
    assert names == expected and "sub/img000.png" in names
    # Round trip: the stored maps are the API's maps (float16 precision).
    model = load_correspondence_model(setup["enc"], "cpu")
    direct = model.correspondence_maps([read_image(setup["imgs"] / n) for n in names[:4]], batch_size=4)
    for a, b in zip(maps[:4], direct):
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert (tmp_path / "prev" / "sub" / "img000.png").is_file()
    prev = read_image(tmp_path / "prev" / "img001.png")
    assert prev.shape[0] == 32 and prev.shape[1] > 64  # thumbnail | gap | map


def test_strict_stops_at_corrupt_image(setup, tmp_path):
    res = _invert(str(setup["enc"]), str(setup["imgs"]), "--out", str(tmp_path / "m.h5"), "--strict")
    assert res.exit_code == 2
    assert "broken.png" in res.stderr and "--strict" in res.stderr


def test_stdin_and_list_file_full_mode(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(setup["imgs"])
    out = tmp_path / "s.h5"
    res = _invert(str(setup["enc"]), "-", "--out", str(out), "--size", "20x24", "--full", "--json",
                  input="img002.png\nsub/img003.png\n# a comment\n\nimg001.png\n")
    assert res.exit_code == 0, res.output
    names, maps = _rows(out)
    assert names == ["img002.png", "sub/img003.png", "img001.png"]  # list order kept
    assert maps[0].shape == (2, 20, 24)
    with h5py.File(out, "r") as f:
        assert f["structure"].shape == (3, 32) and f["texture"].shape == (3, 4, 32)
    recon = read_image(tmp_path / "s_reconstructions" / "sub" / "img003.png")
    assert recon.shape == (32, 32, 3)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(setup["imgs"] / n) for n in ["img004.png", "img005.png"]))
    res = _invert(str(setup["enc"]), str(listing), "--out", str(tmp_path / "l.h5"))
    assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "l.h5")[0] == ["img004.png", "img005.png"]


def test_shards_merge_equal_single_run(setup, tmp_path):
    single = tmp_path / "single.h5"
    assert _invert(str(setup["enc"]), str(setup["imgs"]), "--out", str(single), "--batch-size", "3").exit_code == 0
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        res = _invert(str(setup["enc"]), str(setup["imgs"]), "--out", str(part), "--shard", f"{i}/3", "--batch-size", "2")
        assert res.exit_code == 0, res.output
        parts.append(str(part))
    inputs = sorted(p.relative_to(setup["imgs"]).as_posix() for p in setup["imgs"].rglob("*.png"))
    for i in range(3):  # shard i takes inputs i, i+3, … of the sorted list; the broken file is skipped
        assert _rows(Path(parts[i]))[0] == [n for n in inputs[i::3] if n != "broken.png"]
    merged = tmp_path / "all.h5"
    res = runner.invoke(app, ["invert", "--merge", *parts, "--out", str(merged), "--json"])
    assert res.exit_code == 0, res.output
    names_s, maps_s = _rows(single)
    names_m, maps_m = _rows(merged)
    assert names_m == names_s
    for a, b in zip(maps_s, maps_m):
        np.testing.assert_allclose(a, b, atol=2e-3)  # different batch mates: float rounding only
    assert json.loads((tmp_path / "all.skipped.json").read_text())["skipped"][0]["name"] == "broken.png"
    with h5py.File(merged, "r") as f:
        assert f.attrs["checkpoint_sha256"] == file_sha256(setup["enc"])
    # A name in two shards is an error; so is a shard of another model.
    res = runner.invoke(app, ["invert", "--merge", parts[0], parts[0], "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "also in" in res.stderr


def test_errors_other_model_and_generator_checkpoint(setup, tmp_path):
    out = tmp_path / "m.h5"
    assert _invert(str(setup["enc"]), str(setup["imgs"] / "img001.png"), "--out", str(out)).exit_code == 0
    other_gen = make_generator_checkpoint(tmp_path / "g2.pt", seed=3)
    other_enc = make_encoder_checkpoint(tmp_path / "e2.pt", other_gen, seed=4)
    res = _invert(str(other_enc), str(setup["imgs"]), "--out", str(out))
    assert res.exit_code == 2 and "another model" in res.stderr
    res = _invert(str(setup["gen"]), str(setup["imgs"]), "--out", str(tmp_path / "g.h5"))
    assert res.exit_code == 2 and "encoder checkpoint" in res.stderr
    res = _invert(str(setup["enc"]), str(setup["imgs"]), "--out", str(tmp_path / "z.h5"), "--shard", "3/3")
    assert res.exit_code == 2 and "--shard" in res.stderr
    res = _invert(str(setup["enc"]), str(tmp_path / "missing"), "--out", str(tmp_path / "z.h5"))
    assert res.exit_code == 2 and "missing" in res.stderr


def test_kill_and_rerun_equals_uninterrupted(setup, tmp_path):
    imgs = tmp_path / "many"
    make_images(imgs, 150, seed=7, sub_every=0)
    killed, prev = tmp_path / "killed.h5", tmp_path / "prev"
    cmd = [sys.executable, "-m", "coordgan_cli", "--quiet", "--device", "cpu", "invert", str(setup["enc"]), str(imgs),
           "--out", str(killed), "--batch-size", "4", "--preview", str(prev)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if prev.is_dir() and sum(1 for _ in prev.iterdir()) >= 6:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with StoreReader(killed) as r:  # readable after kill -9, with a prefix of the rows
        partial = len(r)
    assert 0 < partial < 150
    res = _invert(str(setup["enc"]), str(imgs), "--out", str(killed), "--batch-size", "4", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["already_done"] == partial
    whole = tmp_path / "whole.h5"
    assert _invert(str(setup["enc"]), str(imgs), "--out", str(whole), "--batch-size", "4").exit_code == 0
    names_k, maps_k = _rows(killed)
    names_w, maps_w = _rows(whole)
    assert names_k == names_w and len(set(names_k)) == 150
    for a, b in zip(maps_k, maps_w):
        assert np.array_equal(a, b)
