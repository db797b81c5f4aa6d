"""How well could any correspondence map label a synthetic set? Ceilings for one reference.

    python scripts/label_ceilings.py SYNTH_SET [--ref 000000.png] [--map-size 16 32] [--json]

SYNTH_SET is a `coordgan synth` output folder (images/, masks/, labels.json, keypoints.json,
correspondence.h5). Every other image is a query, labelled from the reference's mask by hard
transfer in canonical-coordinate space (each query pixel takes the label of the reference pixel
whose canonical coordinate is nearest), scored with the paper's IoU rules (background excluded,
intersections and unions summed over the queries), at full resolution. Rows:

- ``true maps``: the set's exact correspondence maps — the best any coordinate model can do;
- ``true maps at N px``: the same maps averaged down to N × N and upsampled again (what a model
  whose canonical grid is that coarse can at best express);
- ``affine (keypoints)`` / ``similarity (keypoints)``: the reference mask warped by the affine /
  similarity map fitted (least median of squares) to the visible keypoints of the pair — the best
  a purely global pose model can do;
- ``identity``: the reference mask copied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.correspondence.vote import propagate_map
from coordgan_cli.io.masks import read_labels, read_mask
from coordgan_cli.metrics.iou import IoUAccumulator, summarize
from coordgan_cli.metrics.protocol import resize_labels_nearest


def nearest_coordinate_labels(ref_map: np.ndarray, query_map: np.ndarray, ref_mask: np.ndarray,
                              num_classes: int) -> np.ndarray:
    """The query's (H, W) labels by hard transfer (``propagate``'s nearest-coordinate vote)."""
    return propagate_map(query_map, [(ref_map, ref_mask)], num_classes, mode="hard")[0]


def coarse(correspondence: np.ndarray, size: int) -> np.ndarray:
    """(2, H, W) map averaged to size² and bilinearly upsampled back to H × W."""
    t = torch.from_numpy(correspondence)[None]
    small = F.interpolate(t, size=(size, size), mode="area")
    return F.interpolate(small, size=correspondence.shape[1:], mode="bilinear", align_corners=False)[0].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a coordgan synth output folder")
    parser.add_argument("--ref", default="000000.png", help="the reference image's file name")
    parser.add_argument("--map-size", type=int, nargs="*", default=[16, 32], help="coarse map sizes to try")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    root: Path = args.root
    for need in ("correspondence.h5", "keypoints.json", "labels.json", "masks"):
        if not (root / need).exists():
            print(f"error: {root / need}: missing; SYNTH_SET must be a `coordgan synth` output folder",
                  file=sys.stderr)
            return 2
    with h5py.File(root / "correspondence.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][:]]
        maps = f["correspondence"][:]
    if args.ref not in names:
        print(f"error: --ref {args.ref}: not in {root / 'correspondence.h5'}", file=sys.stderr)
        return 2
    num_classes = len(read_labels(root / "labels.json").names)
    coco = json.loads((root / "keypoints.json").read_text())
    image_id = {Path(im["file_name"]).name: im["id"] for im in coco["images"]}
    keypoints = {a["image_id"]: np.asarray(a["keypoints"], dtype=np.float32).reshape(-1, 3) for a in coco["annotations"]}
    masks = {n: read_mask(root / "masks" / n) for n in names}

    r = names.index(args.ref)
    ref_mask, ref_kp = masks[args.ref], keypoints[image_id[args.ref]]
    rows = {"true maps": IoUAccumulator(num_classes)}
    rows.update({f"true maps at {s} px": IoUAccumulator(num_classes) for s in args.map_size})
    rows.update({k: IoUAccumulator(num_classes) for k in ("affine (keypoints)", "similarity (keypoints)", "identity")})
    for q, name in enumerate(names):
        if q == r:
            continue
        truth = masks[name]
        rows["true maps"].update(nearest_coordinate_labels(maps[r], maps[q], ref_mask, num_classes), truth)
        for s in args.map_size:
            rows[f"true maps at {s} px"].update(
                nearest_coordinate_labels(coarse(maps[r], s), coarse(maps[q], s), ref_mask, num_classes), truth)
        kq = keypoints[image_id[name]]
        seen = (ref_kp[:, 2] > 0) & (kq[:, 2] > 0)
        h, w = truth.shape
        for key, fit in (("affine (keypoints)", cv2.estimateAffine2D),
                         ("similarity (keypoints)", cv2.estimateAffinePartial2D)):
            matrix, _ = fit(ref_kp[seen, :2], kq[seen, :2], method=cv2.LMEDS)
            warped = ref_mask if matrix is None else cv2.warpAffine(
                ref_mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
            rows[key].update(warped, truth)
        rows["identity"].update(resize_labels_nearest(ref_mask, truth.shape), truth)
    figures = {k: round(float(summarize({"all": a}, num_classes).miou), 4) for k, a in rows.items()}
    if args.json:
        print(json.dumps({"root": str(root), "reference": args.ref, "queries": len(names) - 1, "miou": figures}))
    else:
        print(f"{root}: reference {args.ref}, {len(names) - 1} queries, mean IoU at full resolution")
        for k, v in figures.items():
            print(f"  {k:<26} {v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
