"""Correlation label quality and time per image at a working size vs at native resolution.

On synthetic sets (``coordgan synth ... --category faces``) at several sizes, one reference, the
shipped matcher (or ``--checkpoint``), side by side per size:
  * native:   the matcher run at the images' own size (the behaviour before working sizes;
              only with ``--native``: minutes per image beyond 128 px on a CPU);
  * bilinear: matched at the working size, class probabilities upsampled bilinearly;
  * guided:   the same, refined at boundaries by the query image (what propagate/evaluate do);
  * identity: the reference mask copied.
mIoU is computed as ``coordgan evaluate --protocol fullres`` does (mean over the 16 parts,
background excluded), so ``guided`` equals that command's correlation column with ``--refs``.

    coordgan synth /tmp/faces64 --category faces --difficulty medium --seed 777 --count 40 --size 64
    python benchmarks/work_size_quality.py /tmp/faces64 /tmp/faces128 /tmp/faces256 [--queries 39]
        [--native] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordgan_cli.data.benchmarks import load_benchmark  # noqa: E402
from coordgan_cli.io.images import read_image  # noqa: E402
from coordgan_cli.metrics.iou import IoUAccumulator, summarize  # noqa: E402
from coordgan_cli.metrics.protocol import FeatureCorrelation, resize_labels_nearest, soft_one_hot  # noqa: E402


def score(root: Path, variants: dict[str, FeatureCorrelation], ref: str, queries: int | None) -> dict:
    bench = load_benchmark("synthetic", root, refs=[ref], queries=queries)
    c = bench.num_classes
    (r,) = bench.references
    ref_mask = bench.read_mask(r)
    ref_input = [(read_image(r.image), soft_one_hot(ref_mask, c, ref_mask.shape)[:c])]
    accs = {name: IoUAccumulator(c) for name in [*variants, "identity"]}
    seconds = {name: 0.0 for name in variants}
    prepared = {name: corr.prepare(ref_input) for name, corr in variants.items()}
    for q in bench.queries:
        truth = bench.read_mask(q)
        image = read_image(q.image)
        for name, corr in variants.items():
            start = time.perf_counter()
            probabilities = corr.probabilities(image, prepared[name])
            seconds[name] += time.perf_counter() - start
            accs[name].update(probabilities.argmax(axis=0).astype(np.uint8), truth)
        accs["identity"].update(resize_labels_nearest(ref_mask, truth.shape), truth)
    n = len(bench.queries)
    return {"size": list(truth.shape), "queries": n,
            "miou": {name: summarize({ref: acc}, c, bench.exclude).miou for name, acc in accs.items()},
            "seconds_per_query": {name: s / n for name, s in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="synthetic sets (coordgan synth output folders)")
    parser.add_argument("--ref", default="000000.png", help="the one reference")
    parser.add_argument("--queries", type=int, default=None, help="first N other images (default: all)")
    parser.add_argument("--checkpoint", default=None, help="matcher checkpoint (default: the shipped one)")
    parser.add_argument("--work-size", type=int, default=None, help="default: the matcher's training size")
    parser.add_argument("--native", action="store_true", help="also run the matcher at native resolution (slow)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from coordgan_cli.inference import resolve_matcher
    from coordgan_cli.training.matcher import load_matcher, matcher_work_size

    torch.set_num_threads(args.threads)
    path = resolve_matcher(Path(args.checkpoint) if args.checkpoint else None)
    network, cfg = load_matcher(path, torch.device("cpu"))
    work = matcher_work_size(path, cfg, args.work_size)
    common = dict(tau=cfg.tau, k=cfg.k, patch=cfg.patch)
    variants = {"bilinear": FeatureCorrelation(network, work_size=work, refine=False, **common),
                "guided": FeatureCorrelation(network, work_size=work, **common)}
    if args.native:
        variants = {"native": FeatureCorrelation(network, work_size=None, **common), **variants}
    result = {"matcher": path.name, "work_size": work, "reference": args.ref, "sets": {}}
    for root in args.roots:
        entry = score(root, variants, args.ref, args.queries)
        result["sets"][str(root)] = entry
        if not args.json:
            miou = "  ".join(f"{k} {v:.3f}" for k, v in entry["miou"].items())
            secs = "  ".join(f"{k} {v:.3f}" for k, v in entry["seconds_per_query"].items())
            print(f"{root} ({entry['size'][1]}×{entry['size'][0]}, {entry['queries']} queries): mIoU {miou}; "
                  f"s/query {secs}")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
