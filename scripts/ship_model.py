"""Turn a finished run into a model that ships inside the package (``coordgan_cli/shipped/``).

    python scripts/ship_model.py RUN/latest.pt coordgan_cli/shipped/NAME.pt \
        [--evaluation results.json] [--run GAN_RUN --run ENCODER_RUN]

Takes a `coordgan train-matcher` checkpoint (kind "matcher") or a `coordgan train-encoder`
checkpoint (kind "encoder": it embeds its frozen generator, so one file serves `propagate`,
`invert`, `swap` and `evaluate`). Keeps the weights, the resolved recipe and the run facts; drops
the optimiser and RNG state (the shipped file serves inference, not resumption). Writes
``<dst>.json`` beside it: the file's sha256 (the test suite checks it), its size, the training
step, a summary of each given run's ``metrics.jsonl`` and, if given, the `coordgan evaluate --json`
output measured with it.

``--require-miou M --require-margin D`` refuse to ship (exit 1, nothing written) unless the
evaluation's mean IoU is at least M and at least D above its identity baseline — the bar a shipped
CoordGAN must clear (issue: mean IoU ≥ 0.80 and ≥ 0.30 above identity on unseen seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coordgan_cli.io.atomic import atomic_write_json
from coordgan_cli.io.checkpoint import file_sha256, load_checkpoint, save_checkpoint

SHIPPABLE = ("matcher", "encoder")


def summarise_run(run: Path, tail: int = 100) -> dict:
    """Steps, images seen, mean iterations/s and the mean of every logged loss over the last
    ``tail`` logged steps of ``run/metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl: no logged steps")
    last = rows[-tail:]
    skip = {"step", "images", "its", "skipped_files", "ramp"}
    losses = {k: round(sum(r[k] for r in last) / len(last), 5) for k in last[-1] if k not in skip
              and isinstance(last[-1][k], (int, float))}
    its = [r["its"] for r in rows if "its" in r]
    return {"run": run.name, "steps": rows[-1]["step"], "images": rows[-1].get("images"),
            "mean_its": round(sum(its) / len(its), 3) if its else None,
            "first_logged": {k: round(v, 5) for k, v in rows[0].items() if k in losses},
            f"last_{len(last)}_logged_mean": losses}


def check_quality(evaluation: dict, min_miou: float | None, min_margin: float | None) -> None:
    """SystemExit naming the figures when the evaluation misses the bar."""
    miou = float(evaluation["miou"])
    identity = float(evaluation["baselines"]["identity"]["miou"])
    misses = []
    if min_miou is not None and miou < min_miou:
        misses.append(f"mean IoU {miou:.3f} < {min_miou}")
    if min_margin is not None and miou - identity < min_margin:
        misses.append(f"mean IoU - identity = {miou:.3f} - {identity:.3f} = {miou - identity:.3f} < {min_margin}")
    if misses:
        raise SystemExit("not shipped: " + "; ".join(misses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--evaluation", type=Path, help="a `coordgan evaluate --json` output to record")
    parser.add_argument("--run", type=Path, action="append", default=[], help="run folder whose metrics to summarise")
    parser.add_argument("--require-miou", type=float, help="ship only if the evaluation's mean IoU is at least this")
    parser.add_argument("--require-margin", type=float, help="ship only if mean IoU - identity baseline is at least this")
    args = parser.parse_args()
    evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
    if args.require_miou is not None or args.require_margin is not None:
        if evaluation is None:
            raise SystemExit("--require-miou/--require-margin need --evaluation")
        check_quality(evaluation, args.require_miou, args.require_margin)

    data = load_checkpoint(args.src)
    if data["kind"] not in SHIPPABLE:
        raise SystemExit(f"{args.src}: a {data['kind']!r} checkpoint; ship one of: {', '.join(SHIPPABLE)}")
    payload = {k: v for k, v in data.items() if k not in ("optimizers", "rng", "format", "format_version")}
    save_checkpoint(args.dst, payload)
    record = {"name": args.dst.stem, "file": args.dst.name, "kind": data["kind"], "sha256": file_sha256(args.dst),
              "file_bytes": args.dst.stat().st_size, "step": data["step"],
              "recipe": json.loads(data["config"]).get("name") if isinstance(data["config"], str) else None,
              "source": str(data.get("extra", {}).get("source") or data.get("extra", {}).get("generator_checkpoint", ""))}
    if args.run:
        record["training"] = [summarise_run(r) for r in args.run]
    if evaluation is not None:
        record["evaluation"] = evaluation
    atomic_write_json(args.dst.with_suffix(".json"), record)
    print(f"{args.dst}: {args.dst.stat().st_size / 2**20:.1f} MiB, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
