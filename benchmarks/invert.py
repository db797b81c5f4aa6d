"""Images/s of the structure path (encoder trunk + structure head + warp MLP — what ``invert`` and
``propagate`` run) vs full reconstruction (whole encoder + generator synthesis), side by side.

Configurations: the paper's 128 px model (recipes/celebamask-hq-128.toml) and the tiny test model
(recipes/tiny.toml), random weights (speed does not depend on training). Both paths are timed in
alternating rounds so that load on a shared machine hits them alike; the median round counts.
FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode``; utilisation is
achieved FLOP/s over the FLOP/s of a large float32 matmul measured in the same run (the
practical peak of this machine).

    python benchmarks/invert.py [--json] [--device cpu|cuda] [--batch 1] [--rounds R] [--threads T]

JSON keys: ``speed_ratio`` (paper configuration: full seconds / structure seconds per image),
``configs`` {name: {structure_images_per_s, full_images_per_s, speed_ratio, structure_gflops_per_image,
full_gflops_per_image, flop_ratio, structure_utilisation, full_utilisation, batch, rounds}},
``matmul_gflops``, ``device``, ``threads``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordgan_cli.config import load_recipe  # noqa: E402
from coordgan_cli.models import Encoder, Generator, encoder_kwargs, generator_kwargs  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(recipe_path: Path, device: torch.device) -> tuple[Encoder, Generator]:
    m = load_recipe(recipe_path).model
    torch.manual_seed(0)
    enc = Encoder(**encoder_kwargs(m)).to(device).eval().requires_grad_(False)
    gen = Generator(**generator_kwargs(m)).to(device).eval().requires_grad_(False)
    return enc, gen


def structure_path(enc: Encoder, gen: Generator, x: torch.Tensor) -> torch.Tensor:
    return gen.correspondence(enc.encode_structure(x))


def full_path(enc: Encoder, gen: Generator, x: torch.Tensor) -> torch.Tensor:
    w_s, w_plus = enc(x)
    return gen.synthesize(gen.correspondence(w_s), w_plus, noise="const")


def flops_per_image(fn, enc: Encoder, gen: Generator, size: int) -> float:
    """FLOPs of one image through ``fn``, counted on the meta device (no arithmetic is done)."""
    enc_m, gen_m = enc.to("meta"), gen.to("meta")
    x = torch.randn(1, 3, size, size, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(enc_m, gen_m, x)
    return float(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2.0 * n ** 3 * count / (time.perf_counter() - t0)


def time_paths(enc: Encoder, gen: Generator, size: int, batch: int, rounds: int, device: torch.device,
               structure_repeat: int, full_warmup: bool) -> tuple[float, float]:
    """Median seconds per image of each path. Rounds alternate S F S F … S so that changing load
    on a shared machine hits both paths alike; the structure path is warmed up first (the full
    path too when ``full_warmup``: at the paper size one call takes tens of seconds on a CPU, and
    its one-off set-up cost is negligible beside that)."""
    x = torch.randn(batch, 3, size, size, device=device)
    s_times, f_times = [], []

    def run_structure() -> None:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(structure_repeat):
            structure_path(enc, gen, x)
        _sync(device)
        s_times.append((time.perf_counter() - t0) / (structure_repeat * batch))

    with torch.inference_mode():
        structure_path(enc, gen, x)
        if full_warmup:
            full_path(enc, gen, x)
        run_structure()
        for _ in range(rounds):
            _sync(device)
            t0 = time.perf_counter()
            full_path(enc, gen, x)
            _sync(device)
            f_times.append((time.perf_counter() - t0) / batch)
            run_structure()
    return statistics.median(s_times), statistics.median(f_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None,
                        help="full-path rounds (default: 1 for the paper model on a CPU, else 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_flops_per_s(device)
    configs = {}
    for name, recipe, repeat in (("paper", "celebamask-hq-128.toml", 2), ("tiny", "tiny.toml", 10)):
        enc, gen = build(ROOT / "recipes" / recipe, device)
        size = enc.size
        slow = name == "paper" and device.type == "cpu"
        rounds = args.rounds or (1 if slow else 3)
        s_sec, f_sec = time_paths(enc, gen, size, args.batch, rounds, device, repeat, full_warmup=not slow)
        s_flops = flops_per_image(structure_path, enc, gen, size)
        f_flops = flops_per_image(full_path, enc, gen, size)
        configs[name] = {
            "image_size": size,
            "structure_images_per_s": round(1.0 / s_sec, 3),
            "full_images_per_s": round(1.0 / f_sec, 3),
            "speed_ratio": round(f_sec / s_sec, 2),
            "structure_gflops_per_image": round(s_flops / 1e9, 4),
            "full_gflops_per_image": round(f_flops / 1e9, 4),
            "flop_ratio": round(f_flops / s_flops, 2),
            "structure_utilisation": round(s_flops / s_sec / peak, 4),
            "full_utilisation": round(f_flops / f_sec / peak, 4),
            "batch": args.batch,
            "rounds": rounds,
        }
        del enc, gen
    result = {"speed_ratio": configs["paper"]["speed_ratio"], "configs": configs,
              "matmul_gflops": round(peak / 1e9, 2), "device": str(device), "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"device {device}, {torch.get_num_threads()} thread(s); 1024² float32 matmul: {peak / 1e9:.1f} GFLOP/s")
    for name, c in configs.items():
        print(f"{name:>5} ({c['image_size']} px, batch {c['batch']}): structure {c['structure_images_per_s']:.2f} img/s "
              f"({c['structure_gflops_per_image']:.3g} GFLOP, {c['structure_utilisation']:.0%} of matmul), "
              f"full {c['full_images_per_s']:.3f} img/s ({c['full_gflops_per_image']:.3g} GFLOP, "
              f"{c['full_utilisation']:.0%}); speed ratio {c['speed_ratio']:.1f}× (FLOP ratio {c['flop_ratio']:.1f}×)")
    print(f"speed_ratio (paper) = {result['speed_ratio']}")


if __name__ == "__main__":
    main()
