#!/usr/bin/env python
"""Convert the real labelled photos in shared/data into labelled folders (images/, masks/, labels.json).

    python scripts/convert_realdata.py [--data /work/shared/data] [--out /tmp/real]

writes, OUTSIDE the repository (these photos have no licence for redistribution):

    OUT/cars-train   100 DSMLR car-part training photos (512²), 18 part classes + background
    OUT/cars-test    100 DSMLR test photos (61 sizes), same classes
    OUT/faces        4 CelebAMask-HQ samples (MaskGAN demo), 19 classes

Car images are copied unchanged (their masks are already id PNGs of the same size). The face
images are 1024² but their masks 512²: the images are downsized to 512² (Lanczos, saved as
PNG) so every pair matches; the masks are copied unchanged. Existing outputs are overwritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CAR_CLASSES = ["background", "back_bumper", "back_glass", "back_left_door", "back_left_light", "back_right_door",
               "back_right_light", "front_bumper", "front_glass", "front_left_door", "front_left_light",
               "front_right_door", "front_right_light", "hood", "left_mirror", "right_mirror", "tailgate", "trunk",
               "wheel"]
FACE_CLASSES = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]
_REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (or beside its parent, for a worktree one level deeper).
DEFAULT_DATA = next((p / "shared" / "data" for p in (_REPO.parent, _REPO.parent.parent)
                     if (p / "shared" / "data").is_dir()), _REPO.parent / "shared" / "data")


def _write_labels(out: Path, names: list[str]) -> None:
    (out / "labels.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}, indent=1))


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()


def convert_cars(src: Path, out: Path) -> int:
    """Copy one DSMLR split (``src`` = .../carparts_dsmlr/train or test). Returns the image count."""
    _fresh(out)
    count = 0
    for image in sorted((src / "images").glob("*.jpg")):
        mask = src / "masks" / f"{image.stem}.png"
        if not mask.is_file():
            raise SystemExit(f"error: {mask}: mask missing for {image.name}")
        shutil.copyfile(image, out / "images" / image.name)
        shutil.copyfile(mask, out / "masks" / mask.name)
        count += 1
    _write_labels(out, CAR_CLASSES)
    return count


def convert_faces(src: Path, out: Path) -> int:
    """CelebAMask-HQ samples: images downsized to their masks' 512² (Lanczos, PNG)."""
    from PIL import Image

    _fresh(out)
    count = 0
    for image in sorted((src / "images").glob("*.jpg")):
        mask = src / "masks" / f"{image.stem}.png"
        if not mask.is_file():
            raise SystemExit(f"error: {mask}: mask missing for {image.name}")
        with Image.open(mask) as m:
            size = m.size
        with Image.open(image) as im:
            im.convert("RGB").resize(size, Image.LANCZOS).save(out / "images" / f"{image.stem}.png")
        shutil.copyfile(mask, out / "masks" / mask.name)
        count += 1
    _write_labels(out, FACE_CLASSES)
    return count


def convert_all(data: Path, out: Path) -> dict[str, Path]:
    """Convert every set; SystemExit with a one-line message when ``data`` lacks them."""
    cars = data / "carparts_dsmlr"
    faces = data / "celebamaskhq_maskgan_samples"
    for need in (cars / "train" / "images", cars / "test" / "images", faces / "images"):
        if not need.is_dir():
            raise SystemExit(f"error: {need}: not found; pass --data DIR holding carparts_dsmlr/ and "
                             "celebamaskhq_maskgan_samples/ (the project's shared/data)")
    sets = {"cars-train": out / "cars-train", "cars-test": out / "cars-test", "faces": out / "faces"}
    convert_cars(cars / "train", sets["cars-train"])
    convert_cars(cars / "test", sets["cars-test"])
    convert_faces(faces, sets["faces"])
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/real"), help="where the labelled folders go")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if args.out.resolve().is_relative_to(repo):
        raise SystemExit(f"error: {args.out}: inside the repository; these photos must not be committed")
    for name, path in convert_all(args.data, args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
