"""The annotate → propagate → review → suggest → annotate loop, run end to end on a set with masks.

Two rounds on the train photos of a set laid out as ``train/images`` + ``train/masks`` (default:
the DSMLR car photos, ../shared/data/carparts_dsmlr). The true masks stand in for the annotator:
a suggested image is "annotated" by taking its mask. Propagation is the real `coordgan propagate`
with ``--matcher identity`` (default): the coordinates vote on a store of identity maps — every
pixel keeps its own position, so the vote copies the references' labels where they sit and its
confidence is their agreement (the identity baseline: the same labels and confidence for every
image, so round 2 is chosen by novelty alone); with ``--matcher correlation``: the shipped (or
--matcher-ckpt) feature matcher, whose confidence differs per image; with ``--matcher features``
or ``classifier``: the real-photo matchers on the shipped Inception-v3 (``--work-size`` sets their
working resolution, default 512). To keep four propagations over the folder within minutes
on a CPU, they run on copies of the images and masks shrunk to --side² (written under --out,
never into the repository); round 1's `suggest` reads the original photos.

    round 1: coordgan suggest IMAGES --k K                       → K references
             coordgan propagate --store S --refs round1 …        → run1 (labels, confidence)
    round 2: coordgan suggest --from-run run1 --k K              → K more (queries, references: run1/run.json)
             coordgan propagate --store S --refs round1+2 …      → run2

Printed: classes covered by the references and the labels' mIoU against the true masks of the
folder after each round, beside the first K and 2K images by name with the same propagation.

    OMP_NUM_THREADS=1 python scripts/suggest_loop.py --out /tmp/loop
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from coordgan_cli.io.images import list_images  # noqa: E402
from coordgan_cli.io.masks import read_mask  # noqa: E402
from coordgan_cli.metrics.iou import IoUAccumulator  # noqa: E402
from convert_realdata import DEFAULT_DATA as SHARED_DATA  # noqa: E402

DEFAULT_DATA = SHARED_DATA / "carparts_dsmlr"


def coordgan(*args) -> dict:
    cmd = [sys.executable, "-m", "coordgan_cli", "--quiet", "--device", "cpu", *map(str, args), "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    return json.loads(done.stdout)


def identity_store(path: Path, images: list[Path], side: int = 128) -> None:
    from coordgan_cli.io.store import StoreWriter

    ys, xs = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    cmap = np.stack([xs, ys]).astype(np.float32)
    with StoreWriter(path, size=(side, side), source="ground-truth", overwrite=True) as store:
        for p in images:
            store.append(p.name, cmap)


def shrink(images: list[Path], out: Path, side: int) -> list[Path]:
    """PNG copies of the images (bilinear) and their masks (nearest) at side² under out/images, out/masks."""
    from PIL import Image

    copies = []
    for p in images:
        copy = out / "images" / (p.stem + ".png")
        if not copy.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            (out / "masks").mkdir(parents=True, exist_ok=True)
            with Image.open(p) as img:
                img.convert("RGB").resize((side, side), Image.BILINEAR).save(copy)
            with Image.open(mask_of(p)) as mask:
                mask.resize((side, side), Image.NEAREST).save(mask_of(copy))
        copies.append(copy)
    return copies


def mask_of(image: Path) -> Path:
    return image.parent.parent / "masks" / (image.stem + ".png")


def propagate(matcher: list, refs: list[Path], images: Path, out: Path) -> dict:
    pairs = out.with_suffix(".refs.txt")
    pairs.write_text("".join(f"{r} {mask_of(r)}\n" for r in refs))
    return coordgan("propagate", *matcher, "--refs", pairs, "--queries", images, "--out", out)


def miou(run: Path, images: list[Path], num_classes: int) -> float:
    acc = IoUAccumulator(num_classes)
    for p in images:
        acc.update(read_mask(run / "labels" / (p.stem + ".png")), read_mask(mask_of(p)))
    return float(acc.class_iou()[1:].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--side", type=int, default=128, help="side of the copies propagation runs on")
    parser.add_argument("--matcher", choices=("identity", "correlation", "features", "classifier"), default="identity")
    parser.add_argument("--work-size", type=int, default=None, help="working size of the feature matchers")
    parser.add_argument("--matcher-ckpt", type=Path, default=None)
    args = parser.parse_args()
    folder = args.data / "train" / "images"
    if not folder.is_dir():
        sys.exit(f"error: {folder}: not found (the car photos are not shipped; pass --data)")
    images = list_images(folder)
    classes = {p: set(np.unique(read_mask(mask_of(p))).tolist()) - {0, 255} for p in images}
    num_classes = max(max(c) for c in classes.values() if c) + 1
    args.out.mkdir(parents=True, exist_ok=True)
    copies = shrink(images, args.out / "copies", args.side)
    copy_of = dict(zip(images, copies))
    original = dict(zip([c.stem for c in copies], images))
    copies_folder = args.out / "copies" / "images"
    if args.matcher == "identity":
        store = args.out / "identity.h5"
        identity_store(store, copies, args.side)
        matcher = ["--store", store]
    else:
        matcher = ["--matcher", args.matcher] + (["--matcher-ckpt", args.matcher_ckpt] if args.matcher_ckpt else []) \
            + (["--work-size", args.work_size] if args.work_size else [])

    def cover(refs: list[Path]) -> int:
        return len(set().union(*(classes[r] for r in refs)))

    first = coordgan("suggest", folder, "--k", args.k, "--out", args.out / "round1")
    round1 = [Path(p["path"]) for p in first["picks"]]
    run1 = propagate(matcher, [copy_of[r] for r in round1], copies_folder, args.out / "run1")
    second = coordgan("suggest", "--from-run", args.out / "run1", "--k", args.k, "--out", args.out / "round2")
    round2 = [original[Path(p["path"]).stem] for p in second["picks"]]
    run2 = propagate(matcher, [copy_of[r] for r in round1 + round2], copies_folder, args.out / "run2")
    by_name = images[: 2 * args.k]
    base1 = propagate(matcher, [copy_of[r] for r in by_name[: args.k]], copies_folder, args.out / "name1")
    base2 = propagate(matcher, [copy_of[r] for r in by_name], copies_folder, args.out / "name2")

    print(f"{len(images)} images, {num_classes - 1} part classes; mIoU of the propagated labels over the folder "
          f"(at {args.side}², matcher {args.matcher})")
    print(f"{'references':34s} {'classes':>7} {'mIoU %':>7} {'mean confidence':>15}")
    for label, refs, run, summary in [
        (f"round 1: suggest --k {args.k}", round1, args.out / "run1", run1),
        (f"round 1+2: + suggest --from-run", round1 + round2, args.out / "run2", run2),
        (f"first {args.k} by name", by_name[: args.k], args.out / "name1", base1),
        (f"first {2 * args.k} by name", by_name, args.out / "name2", base2),
    ]:
        print(f"{label:34s} {cover(refs):7d} {100 * miou(run, copies, num_classes):7.1f} "
              f"{summary['mean_confidence']:15.3f}")
    print("round 1 picks:", ", ".join(r.name for r in round1))
    print("round 2 picks (confidence in run 1):",
          ", ".join(f"{original[Path(p['path']).stem].name} ({p['mean_confidence']:.3f})" for p in second["picks"]))


if __name__ == "__main__":
    main()
