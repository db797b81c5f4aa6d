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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--evaluation", type=Path, help="a `coordgan evaluate --json` output to record")
    parser.add_argument("--run", type=Path, action="append", default=[], help="run folder whose metrics to summarise")
    args = parser.parse_args()

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
    if args.evaluation:
        record["evaluation"] = json.loads(args.evaluation.read_text())
    atomic_write_json(args.dst.with_suffix(".json"), record)
    print(f"{args.dst}: {args.dst.stat().st_size / 2**20:.1f} MiB, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
