"""Speed of the synthetic data generator (``coordgan synth``), measured side by side in one run.

For each category it times, at the same size:

- ``vectorised``: :func:`coordgan_cli.data.synthetic.generate_sample` — the whole pipeline (map,
  parts, textures, background, clutter, noise, keypoint inversion);
- ``per-pixel loop``: :func:`~coordgan_cli.data.synthetic.reference_geometry` — the
  straightforward implementation: a Python loop over pixels evaluating the same map and template
  per pixel (map, part and flat-lit colour only, so it does LESS work than the vectorised path);
- ``set on disk``: :func:`coordgan_cli.data.synth_set.write_synth_set` — images, masks, HDF5
  store and keypoints written to a temporary folder (``--workers`` processes).

Usage::

    python benchmarks/synth.py                 # 128 px, 200 images per category
    python benchmarks/synth.py --size 256 --images 50 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from coordgan_cli.data.categories import category_names
from coordgan_cli.data.synth_set import SynthSpec, write_synth_set
from coordgan_cli.data.synthetic import generate_sample, reference_geometry


def _rate(fn, n: int) -> tuple[float, float]:
    """(images/s by wall clock, images/s by this process's CPU time). On a shared machine the
    CPU-time rate is the one that does not count time spent waiting for a core."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start), n / max(time.process_time() - cpu, 1e-9)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=200, help="images per category for the fast paths")
    parser.add_argument("--reference-images", type=int, default=1, help="images per category for the per-pixel loop")
    parser.add_argument("--difficulty", default="medium")
    parser.add_argument("--workers", type=int, default=2, help="processes for the on-disk run (1 = serial only)")
    parser.add_argument("--no-disk", action="store_true", help="skip the on-disk runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    results = {"size": args.size, "difficulty": args.difficulty, "cpu_count": os.cpu_count(),
               "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "categories": {}}
    for cat in category_names():
        generate_sample(cat, 0, size=args.size, seed=0, difficulty=args.difficulty)  # warm-up (imports, caches)
        fast, fast_cpu = _rate(lambda i: generate_sample(cat, i, size=args.size, seed=0, difficulty=args.difficulty),
                               args.images)
        slow, slow_cpu = _rate(lambda i: reference_geometry(cat, i, size=args.size, seed=0, difficulty=args.difficulty),
                               args.reference_images)
        row = {"vectorised_images_per_s": fast, "per_pixel_loop_images_per_s": slow, "speedup": fast / slow,
               "vectorised_images_per_cpu_s": fast_cpu, "per_pixel_loop_images_per_cpu_s": slow_cpu,
               "speedup_cpu": fast_cpu / slow_cpu}
        if not args.no_disk:
            for workers in sorted({1, args.workers}):
                with tempfile.TemporaryDirectory() as tmp:
                    spec = SynthSpec(cat, count=args.images, size=args.size, seed=0, difficulty=args.difficulty)
                    start, cpu = time.perf_counter(), time.process_time()
                    write_synth_set(os.path.join(tmp, "set"), spec, workers=workers)
                    row[f"on_disk_workers{workers}_images_per_s"] = args.images / (time.perf_counter() - start)
                    if workers == 1:  # worker processes' CPU time is not this process's
                        row["on_disk_workers1_images_per_cpu_s"] = args.images / (time.process_time() - cpu)
        results["categories"][cat] = row

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"coordgan synth speed at {args.size}x{args.size} ({args.difficulty}); {os.cpu_count()} CPUs, "
          f"1-min load average {results['load_average_1min']:.1f}")
    print("images/s by wall clock (by this process's CPU time in brackets)")
    disk_cols = [k for k in next(iter(results["categories"].values()))
                 if k.startswith("on_disk") and k.endswith("_images_per_s")]
    header = f"{'category':10s} {'vectorised':>18s} {'per-pixel loop':>18s} {'speed-up':>9s}" + "".join(
        f" {k.replace('on_disk_', 'on disk, ').replace('_images_per_s', ''):>20s}" for k in disk_cols)
    print(header)
    for cat, row in results["categories"].items():
        line = (f"{cat:10s} {row['vectorised_images_per_s']:8.1f} ({row['vectorised_images_per_cpu_s']:6.1f}) "
                f"{row['per_pixel_loop_images_per_s']:8.3f} ({row['per_pixel_loop_images_per_cpu_s']:6.3f}) "
                f"{row['speedup']:8.0f}x")
        for k in disk_cols:
            cpu = row.get(k.replace("_images_per_s", "_images_per_cpu_s"))
            line += f" {row[k]:11.1f}" + (f" ({cpu:6.1f})" if cpu else " " * 9)
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
