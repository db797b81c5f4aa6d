#!/usr/bin/env bash
# Recreate the shipped CoordGAN (coordgan_cli/shipped/faces.pt: generator + encoder in one file)
# from scratch on CPU: synthetic faces -> `coordgan train` -> `coordgan train-encoder` ->
# evaluation on a seed it never saw -> scripts/ship_model.py.
# Measured on 2 shared CPU cores: synth ~1 min, GAN 8000 steps 61 min (one thread), encoder 1500
# steps 10 min, evaluation 8 min. ship_model.py ships only a model that clears the bar (mean IoU
# >= 0.80 and >= 0.30 above copying the reference mask, paper protocol, unseen seed). The CPU-sized
# runs of this release did not (2026-11-30, with the pose head: the samples are faces, but mean IoU
# 0.111-0.162 against identity 0.147, one reference; PCK@0.1 up to 0.91, where keypoints left in
# place already score 0.839: the encoder learns the generator's poses, and the generator's faces are
# not yet like the photos; README "Where the labels are lost"), so no CoordGAN model ships yet.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-data/shipped-faces}
encoder_steps=${ENCODER_STEPS:-1500}
coordgan synth "$work/train" --category faces --count 2000 --size 64 --seed 1 --difficulty medium
coordgan train recipes/synthetic-64.toml --data "$work/train/images" --out "$work/gan"
coordgan --seed 1 train-encoder "$work/gan/latest.pt" recipes/synthetic-64-encoder.toml \
    --data "$work/train/images" --out "$work/encoder" --set "encoder.steps=$encoder_steps"
# Held-out set (a seed the model never saw) for the recorded evaluation.
coordgan synth "$work/test" --category faces --count 40 --size 64 --seed 777 --difficulty medium
coordgan evaluate --dataset synthetic --root "$work/test" --ckpt "$work/encoder/latest.pt" --no-correlation \
    --json > "$work/evaluation.json"
python scripts/ship_model.py "$work/encoder/latest.pt" coordgan_cli/shipped/faces.pt \
    --run "$work/gan" --run "$work/encoder" --evaluation "$work/evaluation.json" \
    --require-miou 0.80 --require-margin 0.30
