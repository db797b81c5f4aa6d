"""``coordgan train`` / ``finetune``: runs, exact resume (also after a real kill -9), 2-process DDP,
NaN stop, bad inputs. Everything at 16 px with a random-weight perceptual network."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.config import load_recipe
from coordgan_cli.training.health import HEALTH_KEYS
from coordgan_cli.io.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
name = "test16"
[model]
size = 16
coord_size = 16
latent_dim = 16
mapping_layers = 1
warp_hidden = 16
warp_layers = 2
pe_channels = 8
synthesis_channels = 8
synthesis_layers = 2
noise = "random"
d_channel_multiplier = 1
d_max_channels = 16
patch_size = 8
patch_channels = 8
[losses]
warmup_steps = 2
structure_swap_start = 1
r1_every = 2
perceptual = "random-tiny"
[optim]
batch = 4
[schedule]
steps = 4
log_every = 1
sample_every = 2
checkpoint_every = 1
keep_checkpoints = 2
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    (root / "recipe.toml").write_text(RECIPE)
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        folder = images / "nested" if i % 2 else images
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"face{i}.png")
    (images / "broken.png").write_bytes(b"not an image")
    return root


def _train(workdir: Path, out: Path, *extra: str):
    args = ["--device", "cpu", "--quiet", "train", str(workdir / "recipe.toml"), "--out", str(out),
            "--data", str(workdir / "images"), *extra]
    return runner.invoke(app, args)


def _state(path: Path) -> dict[str, torch.Tensor]:
    data = load_checkpoint(path)
    flat = {"step": torch.tensor(data["step"])}
    for group in ("networks", "ema"):
        for name, sd in data[group].items():
            flat.update({f"{group}.{name}.{k}": v for k, v in sd.items()})
    for name, opt in data["optimizers"].items():
        for pid, st in opt["state"].items():
            flat.update({f"opt.{name}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return flat


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference_run(workdir: Path) -> Path:
    # Module fixtures run before conftest's per-test one: pin the thread count here too, since
    # bitwise equality holds for equal thread counts (CPU reductions split by thread).
    torch.set_num_threads(1)
    out = workdir / "reference"
    result = _train(workdir, out)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_complete_run_dir(reference_run: Path, workdir: Path):
    run = reference_run
    assert load_checkpoint(run / "latest.pt")["step"] == 4
    assert sorted(p.name for p in run.glob("ckpt-*.pt")) == ["ckpt-0000003.pt", "ckpt-0000004.pt"]  # keep 2
    assert (run / "latest.pt").stat().st_ino == (run / "ckpt-0000004.pt").stat().st_ino
    facts = json.loads((run / "config.json").read_text())
    assert facts["recipe"]["model"]["size"] == 16 and facts["seed"] == 0
    # config.toml is itself a recipe giving the same resolved config.
    assert load_recipe(run / "config.toml").to_dict() == {**facts["recipe"]}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert {"d", "g_adv", "chamfer", "warp", "texture_swap", "its"} <= set(lines[0])
    # The patch discriminator starts at losses.structure_swap_start (1 in the tiny recipe).
    assert "structure_swap" not in lines[0] and "d_patch" not in lines[0]
    assert {"structure_swap", "d_patch"} <= set(lines[1])
    # Lazy R1 every 2 steps: step indices 0 and 2, logged as steps 1 and 3 (the patch D's from step 1 on).
    assert ["r1" in r for r in lines] == [True, False, True, False]
    assert ["r1_patch" in r for r in lines] == [False, False, True, False]
    # Training health on every metrics line (training.health).
    assert all(set(HEALTH_KEYS) <= set(r) for r in lines)
    assert all(r["map_displacement_px"] >= 0 and 0 <= r["layout_structure"] <= 2 for r in lines)
    assert lines[-1]["skipped_files"] == 1  # broken.png reported once and skipped
    grid = np.asarray(Image.open(run / "samples" / "step-0000004.png"))
    assert grid.shape == (4 * 16, 5 * 16, 3)  # 4 structure rows × (correspondence map + 4 textures)
    assert load_checkpoint(run / "latest.pt")["extra"]["skipped_files"][0].endswith("broken.png")


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(reference_run: Path, workdir: Path):
    out = workdir / "resumed"
    first = _train(workdir, out, "--max-steps", "2")
    assert first.exit_code == 0, first.output
    assert load_checkpoint(out / "latest.pt")["step"] == 2
    second = _train(workdir, out)
    assert second.exit_code == 0, second.output
    _assert_bitwise_equal(out / "latest.pt", reference_run / "latest.pt")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_kill_9_then_rerun_is_bitwise_equal(reference_run: Path, workdir: Path):
    out = workdir / "killed"
    cmd = [sys.executable, "-m", "coordgan_cli", "--device", "cpu", "--quiet", "train", str(workdir / "recipe.toml"),
           "--out", str(out), "--data", str(workdir / "images")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "ckpt-0000002.pt").exists():  # killed mid-run, after some checkpoints
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "training subprocess made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "latest.pt")["step"] < 4
    result = _train(workdir, out)
    assert result.exit_code == 0, result.output
    _assert_bitwise_equal(out / "latest.pt", reference_run / "latest.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, recipe: str, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from coordgan_cli.training.loop import TrainOptions, train

    recipe_obj = _with_data(load_recipe(recipe, ["schedule.steps=2"]), data)
    train(TrainOptions(recipe=recipe_obj, run=Path(out), device=torch.device("cpu")))


def _with_data(recipe, data: str):
    import dataclasses

    return recipe.replace(data=dataclasses.replace(recipe.data, path=data))


def test_two_process_gloo_equals_one_process_same_global_batch(workdir: Path):
    import torch.multiprocessing as mp

    out = workdir / "ddp"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(workdir / "recipe.toml"), str(workdir / "images"),
                                          str(out)), nprocs=2, join=True, start_method="spawn")
    # One process, same global batch of 4, split the same way (2 micro-batches of 2).
    single = workdir / "single"
    result = _train(workdir, single, "--set", "schedule.steps=2", "--set", "optim.accumulate=2")
    assert result.exit_code == 0, result.output
    a, b = _state(out / "latest.pt"), _state(single / "latest.pt")
    assert a.keys() == b.keys()
    assert any(k.startswith("networks.patch_discriminator.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(workdir: Path, monkeypatch):
    from coordgan_cli.training import generator_step

    real = generator_step.losses.chamfer_loss
    calls = {"n": 0}

    def chamfer_then_nan(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(generator_step.losses, "chamfer_loss", chamfer_then_nan)
    out = workdir / "nan"
    result = _train(workdir, out)
    assert result.exit_code == 3
    assert "loss chamfer became nan at step 3" in result.output
    assert load_checkpoint(out / "latest.pt")["step"] == 2


def test_bad_inputs_give_one_clear_message(workdir: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--data", str(tmp_path / "missing")], "training image folder not found"),
        (["--data", str(empty)], "no images found"),
        (["--data", str(workdir / "images"), "--set", "losses.wrap=1"], "unknown key losses.wrap (did you mean 'warp'?)"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["--device", "cpu", "train", str(workdir / "recipe.toml"), "--out",
                                     str(tmp_path / "run"), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _train(workdir, blocker / "run")
    assert result.exit_code == 2 and f"{blocker} is a file, not a folder" in result.output
    # Resuming a run with another architecture is refused.
    result = _train(workdir, workdir / "reference", "--set", "model.synthesis_channels=4")
    assert result.exit_code == 2 and "model.synthesis_channels" in result.output


def test_dry_run_prints_resolved_recipe_and_writes_nothing(workdir: Path, tmp_path: Path):
    result = runner.invoke(app, ["train", str(workdir / "recipe.toml"), "--out", str(tmp_path / "r"), "--dry-run",
                                 "--set", "optim.lr=0.001"])
    assert result.exit_code == 0
    assert "lr = 0.001" in result.stdout and not (tmp_path / "r").exists()


def test_finetune_high_resolution_and_new_domain(reference_run: Path, workdir: Path, tmp_path: Path):
    ckpt = reference_run / "latest.pt"
    hi = tmp_path / "hi.toml"
    hi.write_text(RECIPE.replace("size = 16\ncoord_size", "size = 32\nhighres_channels = [8]\ncoord_size")
                  .replace("steps = 4", "steps = 2"))
    out = tmp_path / "ft"
    result = runner.invoke(app, ["--device", "cpu", "--quiet", "finetune", str(ckpt), str(hi), "--out", str(out),
                                 "--data", str(workdir / "images"), "--new-domain"])
    assert result.exit_code == 0, result.output
    before, after = load_checkpoint(ckpt), load_checkpoint(out / "latest.pt")
    g0, g1 = before["ema"]["generator"], after["networks"]["generator"]
    for k in g0:  # structure networks frozen at the trained (EMA) weights; the rest trained
        if k.startswith(("mapping_structure.", "warp.")):
            assert torch.equal(g0[k], g1[k]), k
    assert not torch.equal(g0["mapping_texture.net.1.weight"], g1["mapping_texture.net.1.weight"])
    assert any(k not in g0 for k in g1)  # appended upsampling blocks
    assert after["extra"]["stage"] == "finetune-new-domain"
    assert "discriminator.convs.0." in after["extra"]["frozen"]
    d0 = torch.load(out / "ckpt-0000001.pt", weights_only=True)["networks"]["discriminator"]
    d1 = after["networks"]["discriminator"]
    assert torch.equal(d0["convs.0.0.weight"], d1["convs.0.0.weight"])  # FreezeD layer unchanged
    assert not torch.equal(d0["final_conv.0.weight"], d1["final_conv.0.weight"])

    # A checkpoint of another architecture is one clear error.
    other = tmp_path / "other.toml"
    other.write_text(RECIPE.replace("synthesis_channels = 8", "synthesis_channels = 4"))
    result = runner.invoke(app, ["--device", "cpu", "finetune", str(ckpt), str(other), "--out", str(tmp_path / "x"),
                                 "--data", str(workdir / "images")])
    assert result.exit_code == 2 and "model.synthesis_channels" in result.output
