"""One training step (D update + G update, full objective): ours against the same model whose
warp loss uses the dense HW × HW softmax matrix.

Each method runs in a fresh subprocess (its peak memory is its own): one warm-up step, then
the peak resident set is reset (``/proc/self/clear_refs``) and ``--steps`` steps are timed; the
reported memory is the peak minus the resident set before the timed steps (on CUDA,
``torch.cuda.max_memory_allocated``).

    python benchmarks/train_step.py [--json] [--recipe recipes/tiny.toml] [--set k=v ...] [--steps 3]

On a GPU, the paper configuration at batch 8 per GPU:

    python benchmarks/train_step.py --device cuda --recipe recipes/celebamask-hq-128.toml \\
        --set optim.batch=8 --set losses.perceptual=random-tiny

JSON keys: ``its_ratio`` (ours / dense steps per second), ``memory_ratio`` (dense / ours peak),
plus the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _peak import PeakMemory  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def measure(method: str, args: argparse.Namespace) -> dict:
    import functools

    import torch

    from coordgan_cli import losses
    from coordgan_cli.config import load_recipe
    from coordgan_cli.device import seed_everything
    from coordgan_cli.perceptual import build_perceptual
    from coordgan_cli.training import generator_step as gs
    from coordgan_cli.training.distributed import Distributed
    from coordgan_cli.training.loop import build_gan

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    recipe = load_recipe(args.recipe, args.set)
    if method == "dense":
        # The same step with the reference warp loss (full softmax matrix per pair).
        gs.losses = type("DenseLosses", (), {k: getattr(losses, k) for k in dir(losses) if not k.startswith("_")})
        gs.losses.warp_loss = staticmethod(functools.partial(losses.warp_loss, dense=True))
    seed_everything(0)
    with torch.device(device):
        nets = build_gan(recipe.model)
    state = gs.build_train_state(recipe, nets, [])
    size = recipe.model.size
    gen = torch.Generator().manual_seed(0)
    ctx = gs.StepContext(recipe, 0, build_perceptual(recipe.losses.perceptual, device), Distributed(0, 1, device),
                         lambda pos: torch.rand(len(pos), 3, size, size, generator=gen) * 2 - 1)
    gs.train_step(state, ctx)  # warm-up
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        for _ in range(args.steps):
            gs.train_step(state, ctx)
        seconds = time.perf_counter() - start
    return {"its": args.steps / seconds, "peak_bytes": peak.bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "tiny.toml"))
    parser.add_argument("--set", action="append", default=[], help="recipe override section.key=value")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["ours", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    results = {}
    for method in ("ours", "dense"):
        cmd = [sys.executable, __file__, "--child", method, "--recipe", args.recipe, "--steps", str(args.steps),
               "--device", args.device, "--threads", str(args.threads)] + [f"--set={s}" for s in args.set]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    summary = {
        "recipe": args.recipe, "overrides": args.set, "device": args.device,
        "its_ratio": results["ours"]["its"] / results["dense"]["its"],
        "memory_ratio": results["dense"]["peak_bytes"] / results["ours"]["peak_bytes"],
        "ours_its": results["ours"]["its"], "dense_its": results["dense"]["its"],
        "ours_peak_mib": results["ours"]["peak_bytes"] / 2**20, "dense_peak_mib": results["dense"]["peak_bytes"] / 2**20,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:>16}: {v:.3f}" if isinstance(v, float) else f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
