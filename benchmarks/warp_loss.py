"""Warp loss: ours (attention form, no HW × HW matrix) against the dense softmax matrix.

For each size (64², 128²) both methods run the soft warp of one pair of correspondence maps,
forward + backward (gradients for both maps and the image), side by side in this run. Each
measurement runs in a fresh subprocess so that its peak memory is its own: the peak resident
set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after set-up and a warm-up) minus
the resident set before the timed call. On a CUDA device, ``torch.cuda.max_memory_allocated``
is used instead.

    python benchmarks/warp_loss.py [--json] [--sizes 64 128] [--batch 1] [--device cpu]

JSON: a list with one object per size: ``size``, ``time_ratio`` (dense / ours), ``memory_ratio``
(dense / ours), plus the raw seconds and MiB of each method.
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


def measure(method: str, size: int, batch: int, device_name: str, tau: float, repeats: int) -> dict:
    """Runs in the child process: time and peak memory of one method at one size."""
    import torch

    from coordgan_cli import losses

    device = torch.device(device_name)
    tau = tau if tau > 0 else losses.warp_temperature(0.635, size)
    g = torch.Generator().manual_seed(0)
    grid = losses.canonical_grid(size, size).expand(batch, -1, -1, -1)
    ca = (grid + 0.05 * torch.randn(batch, 2, size, size, generator=g)).to(device).requires_grad_()
    cb = (grid + 0.05 * torch.randn(batch, 2, size, size, generator=g)).to(device).requires_grad_()
    img = torch.rand(batch, 3, size, size, generator=g).to(device).requires_grad_()
    warp = losses.soft_warp_dense if method == "dense" else losses.soft_warp

    def step() -> None:
        out = warp(ca, cb, img, tau)
        out.square().sum().backward()
        ca.grad = cb.grad = img.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Warm-up on a small size so thread pools and kernels are set up before measuring.
    small = losses.canonical_grid(8, 8).unsqueeze(0).to(device).requires_grad_()
    warp(small, small, torch.rand(1, 3, 8, 8, device=device), tau).sum().backward()

    times = []
    with PeakMemory(device) as peak:
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_bytes": peak.bytes}


def losses_temperature(size: int) -> float:
    from coordgan_cli import losses

    return losses.warp_temperature(0.635, size)


def run_child(method: str, size: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--sizes", str(size), "--batch", str(args.batch),
           "--device", args.device, "--tau", str(args.tau), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=1, help="pairs per call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tau", type=float, default=0.0,
                        help="softmax temperature; 0 (default) = what the recipes use: the paper's reach "
                             "(0.635 map pixels) on each size's map, squared kernel (1e-4 at 128)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--child", choices=["ours", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, args.sizes[0], args.batch, args.device, args.tau, args.repeats)))
        return

    results = []
    for size in args.sizes:
        ours = run_child("ours", size, args)
        dense = run_child("dense", size, args)
        results.append({
            "size": size,
            "time_ratio": dense["seconds"] / ours["seconds"],
            "memory_ratio": dense["peak_bytes"] / ours["peak_bytes"],
            "ours_seconds": ours["seconds"],
            "dense_seconds": dense["seconds"],
            "ours_peak_mib": ours["peak_bytes"] / 2**20,
            "dense_peak_mib": dense["peak_bytes"] / 2**20,
            "batch": args.batch,
            "device": args.device,
            "tau": args.tau if args.tau > 0 else losses_temperature(size),
        })
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'size':>6} {'ours s':>9} {'dense s':>9} {'time x':>7} {'ours MiB':>9} {'dense MiB':>10} {'mem x':>7}")
    for r in results:
        print(f"{r['size']:>6} {r['ours_seconds']:>9.3f} {r['dense_seconds']:>9.3f} {r['time_ratio']:>7.2f} "
              f"{r['ours_peak_mib']:>9.1f} {r['dense_peak_mib']:>10.1f} {r['memory_ratio']:>7.1f}")


if __name__ == "__main__":
    main()
