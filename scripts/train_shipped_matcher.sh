#!/usr/bin/env bash
# Recreate the shipped correlation matcher (coordgan_cli/shipped/synthetic-matcher.pt) from scratch.
# Measured on 2 shared CPU cores: synth ~1 min, training ~15 min (0.35 s/step), evaluation ~2 min.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-data/shipped-matcher}
coordgan synth "$work/train" --category faces --count 2000 --size 64 --seed 1 --difficulty medium
coordgan --seed 1 train-matcher recipes/matcher-synthetic.toml --out "$work/run" --store "$work/train/correspondence.h5"
# Held-out set (a seed the matcher never saw) for the recorded evaluation.
coordgan synth "$work/test" --category faces --count 40 --size 64 --seed 777 --difficulty medium
coordgan evaluate --dataset synthetic --root "$work/test" --store "$work/test/correspondence.h5" \
    --matcher-ckpt "$work/run/latest.pt" --protocol fullres --json > "$work/evaluation.json"
python scripts/ship_model.py "$work/run/latest.pt" coordgan_cli/shipped/synthetic-matcher.pt \
    --evaluation "$work/evaluation.json"
