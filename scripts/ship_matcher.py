"""Turn a `coordgan train-matcher` run into the matcher that ships inside the package.

    python scripts/ship_matcher.py RUN/latest.pt coordgan_cli/shipped/synthetic-matcher.pt \
        --evaluation results.json

Keeps the weights, the resolved recipe and the training summary; drops the optimiser state (the
shipped file serves inference, not resumption). Writes ``<dst>.json`` beside it with the file's
sha256, the training step and, if given, the evaluation that was measured with it — the test suite
checks the hash.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coordgan_cli.io.atomic import atomic_write_json
from coordgan_cli.io.checkpoint import file_sha256, load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--evaluation", type=Path, help="a `coordgan evaluate --json` output to record")
    args = parser.parse_args()

    data = load_checkpoint(args.src)
    if data["kind"] != "matcher":
        raise SystemExit(f"{args.src}: a {data['kind']!r} checkpoint, not a matcher")
    payload = {k: v for k, v in data.items() if k not in ("optimizers", "format", "format_version")}
    save_checkpoint(args.dst, payload)
    record = {"file": args.dst.name, "sha256": file_sha256(args.dst), "step": data["step"],
              "source": str(data.get("extra", {}).get("source", ""))}
    if args.evaluation:
        record["evaluation"] = json.loads(args.evaluation.read_text())
    atomic_write_json(args.dst.with_suffix(".json"), record)
    print(f"{args.dst}: {args.dst.stat().st_size / 2**20:.1f} MiB, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
