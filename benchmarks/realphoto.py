#!/usr/bin/env python
"""Few-shot part labelling on real photos: the pretrained-feature matchers beside identity.

    python benchmarks/realphoto.py [--data /work/shared/data] [--json] [options]

Protocol (issue 18): mean IoU over the part classes present in the query set's ground truth
(background excluded), each class ΣI/ΣU over the whole query set, predictions on ground-truth
background ignored (``metrics.iou``):

- cars: DSMLR car parts; references = the first 5 training photos by name, queries = all 100
  test photos (61 sizes), every query labelled at its own size with the 5 references fused;
- faces: the 4 CelebAMask-HQ samples, leave-one-out: each face labelled from the other 3.

``identity`` is the references' masks resized (nearest) to the query and majority-voted per
pixel. ``seconds_per_query`` times ``predict_proba`` on one 512² query with the 5 car
references already fitted, with ``--threads`` torch threads (default 2). The sets are converted
with ``scripts/convert_realdata.py`` into a temporary folder (never the repository).
``--head RUN/latest.pt`` puts a projection head from ``coordgan train-matcher --data`` (adapted to
unlabelled photos) on the hypercolumns of both matchers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coordgan_cli.backbones import load_backbone  # noqa: E402
from coordgan_cli.correspondence.feature_matcher import FeatureVoteMatcher  # noqa: E402
from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder, mirror_pairs  # noqa: E402
from coordgan_cli.correspondence.pixel_classifier import PixelClassifierMatcher  # noqa: E402
from coordgan_cli.correspondence.projection_head import HeadEncoder, load_head  # noqa: E402
from coordgan_cli.data.folder import FolderDataset, read_folder_dataset  # noqa: E402
from coordgan_cli.metrics.iou import IoUAccumulator  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from convert_realdata import DEFAULT_DATA, convert_all  # noqa: E402


def identity_labels(masks: list[np.ndarray], size: tuple[int, int], num_classes: int) -> np.ndarray:
    """Majority vote of the reference masks resized (nearest) to ``size``; ties → lowest id."""
    votes = np.zeros((num_classes + 1,) + size, dtype=np.int32)
    for m in masks:
        r = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        r = np.where(r < num_classes, r, num_classes)  # 255 → a spare slot that never wins below
        np.add.at(votes, (r,) + tuple(np.indices(size)), 1)
    votes[num_classes] = -1
    return votes.argmax(axis=0).astype(np.uint8)


def score(acc: IoUAccumulator) -> tuple[float, dict[int, float]]:
    """mIoU over classes present in the queries' ground truth (union of truth > 0)."""
    iou = acc.class_iou()
    present = [c for c in range(1, acc.num_classes) if acc.truth_area[c] > 0]
    return float(np.mean([iou[c] for c in present])), {c: float(iou[c]) for c in present}


class Accumulator(IoUAccumulator):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.truth_area = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        super().update(prediction, truth)
        t = truth[truth < self.num_classes].astype(np.int64)
        self.truth_area += np.bincount(t, minlength=self.num_classes)[: self.num_classes]


def make_matcher(kind: str, encoder: HypercolumnEncoder, args, swap):
    flip = "auto" if args.flip else None
    if kind == "features":
        return FeatureVoteMatcher(encoder, k=args.k, temperature=args.temperature,
                                  position_weight=args.position_weight, dims=args.fdims, flip_swap=flip,
                                  top_references=args.top_references, layout_grid=args.layout_grid,
                                  refine=not args.no_refine, side=args.side,
                                  background_weight=args.background_weight, class_balance=args.class_balance)
    return PixelClassifierMatcher(encoder, members=args.members, dims=args.dims, hidden=args.hidden, steps=args.steps,
                                  position=args.position_scale > 0, position_scale=max(args.position_scale, 0.0),
                                  position_frequencies=args.position_frequencies, label_scale=args.label_scale,
                                  flip_swap=flip, refine=not args.no_refine, seed=args.seed,
                                  class_balance=args.class_balance)


def predict_ids(matcher, image: np.ndarray) -> np.ndarray:
    probs, _ = matcher.predict_proba(image)
    return np.asarray(matcher.classes, dtype=np.uint8)[probs.argmax(axis=0)]


def run_set(kind: str, encoder, args, refs: FolderDataset, ref_idx: list[int], queries: FolderDataset,
            folds: list[tuple[list[int], list[int]]] | None = None, limit: int | None = None) -> dict:
    """folds: [(ref indices into refs, query indices into queries)]; default one fold."""
    num_classes = queries.labels.num_classes
    swap = mirror_pairs(dict(queries.labels.names))
    folds = folds or [(ref_idx, list(range(len(queries)))[:limit])]
    acc = Accumulator(num_classes)
    ident = Accumulator(num_classes)
    fit_s, pred_s, n = 0.0, 0.0, 0
    for r_idx, q_idx in folds:
        pairs = [refs.pair(i) for i in r_idx]
        t = time.perf_counter()
        # Every class of the label set, as `coordgan evaluate --dataset folder` fits them.
        matcher = make_matcher(kind, encoder, args, swap).fit_arrays([p[0] for p in pairs], [p[1] for p in pairs],
                                                                     list(range(num_classes)),
                                                                     names=dict(queries.labels.names))
        fit_s += time.perf_counter() - t
        for q in q_idx:
            image, truth = queries.pair(q)
            t = time.perf_counter()
            acc.update(predict_ids(matcher, image), truth)
            pred_s += time.perf_counter() - t
            n += 1
            ident.update(identity_labels([p[1] for p in pairs], truth.shape, num_classes), truth)
    miou, per_class = score(acc)
    id_miou, _ = score(ident)
    names = queries.labels.names
    return {"miou": round(miou, 4), "identity": round(id_miou, 4), "queries": n,
            "fit_seconds": round(fit_s / len(folds), 2), "seconds_per_query_measured": round(pred_s / max(n, 1), 3),
            "per_class": {names.get(c, str(c)): round(v, 3) for c, v in per_class.items()}}


def parser() -> argparse.ArgumentParser:
    """The benchmark's options (tests read its defaults from here)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--matchers", default="features,classifier")
    p.add_argument("--sets", default="cars,faces")
    p.add_argument("--backbone", default="inception")
    p.add_argument("--backbone-weights", default=None)
    p.add_argument("--head", default=None,
                   help="projection head from `coordgan train-matcher --data` (RUN/latest.pt) on the hypercolumns")
    p.add_argument("--layers", default=None, help="comma-separated backbone layers")
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--working-size", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--position-weight", type=float, default=0.5)
    p.add_argument("--fdims", type=int, default=128, help="features matcher: PCA components (0 = all)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="do not also use mirrored references (left/right classes renamed)")
    p.add_argument("--top-references", type=int, default=0, help="features: vote over the M best-laid-out refs")
    p.add_argument("--layout-grid", type=int, default=4)
    p.add_argument("--side", default="pooled", choices=("pooled", "view"),
                   help="features: left/right side from the pooled vote, or one per-query view decision")
    p.add_argument("--background-weight", type=float, default=1.0, help="features: background vote share × this")
    p.add_argument("--class-balance", type=float, default=0.5,
                   help="both matchers: part classes' shares × (area share / mean)^-α (0 = plain vote)")
    p.add_argument("--no-refine", action="store_true", help="bilinear upsampling only (no guided filter)")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--dims", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--position-scale", type=float, default=1.0, help="classifier position input scale (0 = off)")
    p.add_argument("--position-frequencies", type=int, default=0)
    p.add_argument("--label-scale", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N car queries (quick experiments)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-timing", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if not args.data.is_dir():
        print(f"error: {args.data}: data folder not found; pass --data DIR holding carparts_dsmlr/ and "
              "celebamaskhq_maskgan_samples/", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="realphoto-")
    try:
        sets = convert_all(args.data, Path(tmp.name))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    layers = args.layers.split(",") if args.layers else None
    backbone = load_backbone(args.backbone, args.backbone_weights, "cpu", layers=layers, stride=args.stride)
    if args.head is None:
        encoder = HypercolumnEncoder(backbone, args.working_size)
    else:
        encoder = HeadEncoder(backbone, args.working_size, *load_head(args.head), source=str(args.head))
    cars_train, cars_test = read_folder_dataset(sets["cars-train"]), read_folder_dataset(sets["cars-test"])
    faces = read_folder_dataset(sets["faces"])

    result: dict = {"backbone": args.backbone, "layers": backbone.layers, "stride": backbone.stride,
                    "working_size": args.working_size, "config": {k: v for k, v in vars(args).items()
                                                                  if k not in ("data", "json")}}
    result["config"]["data"] = str(args.data)
    kinds = [m for m in args.matchers.split(",") if m]
    for kind in kinds:
        fig: dict = {}
        if "cars" in args.sets:
            fig["cars"] = run_set(kind, encoder, args, cars_train, list(range(5)), cars_test, limit=args.limit)
        if "faces" in args.sets:
            folds = [([j for j in range(len(faces)) if j != i], [i]) for i in range(len(faces))]
            fig["faces"] = run_set(kind, encoder, args, faces, [], faces, folds=folds)
        result[kind] = fig
        if not args.json:
            for s, f in fig.items():
                print(f"{kind:10s} {s:5s} mIoU {f['miou']:.3f}  identity {f['identity']:.3f}  "
                      f"fit {f['fit_seconds']:.1f}s  {f['seconds_per_query_measured']:.2f}s/query", flush=True)
    for s in ("cars", "faces"):
        got = [(result[k][s]["miou"], k) for k in kinds if s in result[k]]
        if got:
            result[f"miou_{s}"], result[f"best_{s}"] = max(got)
            result[f"identity_{s}"] = result[kinds[0]][s]["identity"]
    if not args.no_timing and "cars" in args.sets:
        pairs = [cars_train.pair(i) for i in range(5)]
        query = cv2.resize(cars_test.image(0), (512, 512), interpolation=cv2.INTER_AREA)
        swap = mirror_pairs(dict(cars_test.labels.names))
        timing = {}
        for kind in kinds:
            m = make_matcher(kind, encoder, args, swap).fit_arrays([q[0] for q in pairs], [q[1] for q in pairs],
                                                                     names=dict(cars_test.labels.names))
            m.predict_proba(query)
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                m.predict_proba(query)
                runs.append(time.perf_counter() - t)
            timing[kind] = round(float(np.median(runs)), 3)
        result["seconds_per_query_by_matcher"] = timing
        result["seconds_per_query"] = max(timing.values())
    tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print({k: v for k, v in result.items() if k.startswith(("miou", "identity", "seconds", "best"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
