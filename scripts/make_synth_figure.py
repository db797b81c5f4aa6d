"""Draws the README picture of ``coordgan synth``: ``docs/synth.png``.

For each category, four rows over six instances (two easy, two medium, two hard): the image, its
part mask (labels.json colours), its ground-truth correspondence (canonical x → red, y → green,
non-object pixels dark) and its keypoints (visible: filled, covered: ring).

Usage::

    python scripts/make_synth_figure.py            # writes docs/synth.png
    python scripts/make_synth_figure.py --out /tmp/synth.png --size 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from coordgan_cli.data.categories import category_names, get_category
from coordgan_cli.data.synth_set import category_labels
from coordgan_cli.data.synthetic import generate_sample
from coordgan_cli.io.atomic import atomic_path

COLUMNS = (("easy", 0), ("easy", 1), ("medium", 2), ("medium", 3), ("hard", 4), ("hard", 5))


def correspondence_picture(correspondence: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(2, S, S) canonical (x, y) in [-1, 1] → uint8 RGB: x → red, y → green; invalid pixels dark."""
    rgb = np.zeros((*valid.shape, 3), np.float32)
    rgb[..., 0] = (correspondence[0] + 1) * 0.5
    rgb[..., 1] = (correspondence[1] + 1) * 0.5
    rgb[..., 2] = 0.25
    rgb[~valid] *= 0.2
    return (rgb * 255 + 0.5).astype(np.uint8)


def keypoint_picture(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    out = (image.astype(np.float32) * 0.6).astype(np.uint8)
    scale = 16  # cv2 sub-pixel drawing (4 fractional bits)
    radius = max(2, image.shape[0] // 48)
    for k, (x, y, vis) in enumerate(keypoints):
        if vis == 0:
            continue
        hue = int(180 * k / len(keypoints))
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        centre = (int(round(x * scale)), int(round(y * scale)))
        cv2.circle(out, centre, radius * scale, colour, -1 if vis == 2 else 1, cv2.LINE_AA, 4)
    return out


def make_figure(size: int = 128, seed: int = 0) -> np.ndarray:
    """The whole picture as uint8 RGB."""
    rows = []
    header_h = max(18, size // 6)
    for name in category_names():
        cat = get_category(name)
        lut = category_labels(cat).colour_array()
        tiles = {key: [] for key in ("image", "mask", "correspondence", "keypoints")}
        for difficulty, index in COLUMNS:
            s = generate_sample(cat, index, size=size, seed=seed, difficulty=difficulty)
            tiles["image"].append(s.image)
            tiles["mask"].append(lut[s.mask])
            tiles["correspondence"].append(correspondence_picture(s.correspondence, s.valid))
            tiles["keypoints"].append(keypoint_picture(s.image, s.keypoints))
        header = np.full((header_h, size * len(COLUMNS), 3), 255, np.uint8)
        for c, (difficulty, _) in enumerate(COLUMNS):
            cv2.putText(header, f"{name} / {difficulty}", (c * size + 4, header_h - 5), cv2.FONT_HERSHEY_SIMPLEX,
                        header_h / 40, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(header)
        for key in ("image", "mask", "correspondence", "keypoints"):
            rows.append(np.concatenate(tiles[key], axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "synth.png")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    picture = make_figure(args.size, args.seed)
    ok, buf = cv2.imencode(".png", picture[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    with atomic_path(args.out) as tmp:
        tmp.write_bytes(buf.tobytes())
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
