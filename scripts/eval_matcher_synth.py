"""Label-propagation mIoU of the correlation matcher on a held-out `coordgan synth` set.

For each of the first ``--refs`` images (references, with their masks) every other image
(query) is labelled by:
  * identity            — the reference mask copied pixel for pixel (no matching at all);
  * correlation-untrained — correlation of a randomly initialised matcher of the same
                          architecture (what training adds);
  * correlation         — correlation of the trained matcher (``--matcher``);
  * gt-coordinates      — nearest ground-truth canonical coordinate (oracle upper bound; uses the
                          set's correspondence.h5, which no real image has).
IoU follows the paper's protocol (coordgan_cli.metrics.iou): per reference, intersection and
union summed over all queries, background not scored, predictions on ground-truth background
ignored, mean over classes then over references.

    python scripts/eval_matcher_synth.py --test SYNTH_DIR --matcher RUN/latest.pt [--refs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordgan_cli.correspondence.correlation import propagate_correlation  # noqa: E402
from coordgan_cli.io.images import read_image  # noqa: E402
from coordgan_cli.io.masks import read_labels, read_mask  # noqa: E402
from coordgan_cli.io.store import StoreReader  # noqa: E402
from coordgan_cli.metrics.iou import class_iou, intersection_union, scored_classes  # noqa: E402
from coordgan_cli.training.matcher import build_matcher, load_matcher  # noqa: E402


def gt_coordinate_labels(store: StoreReader, query: str, ref: str, ref_mask: np.ndarray) -> np.ndarray:
    """Oracle: each valid query pixel takes the label of the reference pixel with the nearest
    ground-truth canonical coordinate; other pixels are background."""
    qi, ri = store.index(query), store.index(ref)
    qc, rc = store.correspondence(qi), store.correspondence(ri)
    qv, rv = store.valid(qi), store.valid(ri)
    labels = np.zeros(qv.shape, np.uint8)
    _, nearest = cKDTree(rc.reshape(2, -1)[:, rv.reshape(-1)].T).query(qc.reshape(2, -1)[:, qv.reshape(-1)].T)
    labels[qv] = ref_mask[rv][nearest]
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", type=Path, required=True, help="a `coordgan synth` folder not used in training")
    parser.add_argument("--matcher", type=Path, required=True, help="trained matcher checkpoint (RUN/latest.pt)")
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=None, help="at most this many queries (default: all)")
    parser.add_argument("--k", type=int, default=None, help="top-k (default: the matcher recipe's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(2)
    labels = read_labels(args.test / "labels.json")
    num_classes = labels.num_classes
    names = sorted(p.name for p in (args.test / "images").glob("*.png"))
    refs, queries = names[: args.refs], names[args.refs:]
    if args.queries:
        queries = queries[: args.queries]
    matcher, cfg = load_matcher(args.matcher)
    torch.manual_seed(0)
    untrained = build_matcher(cfg).eval()
    k = args.k or cfg.k
    images = {n: read_image(args.test / "images" / n) for n in refs + queries}
    masks = {n: read_mask(args.test / "masks" / n) for n in refs + queries}
    store = StoreReader(args.test / "correspondence.h5")

    methods = {
        "identity": lambda q, r: masks[r].copy(),
        "correlation-untrained": lambda q, r: propagate_correlation(
            images[q], [(images[r], masks[r])], untrained, num_classes, tau=cfg.tau, k=k, patch=cfg.patch)[0],
        "correlation": lambda q, r: propagate_correlation(
            images[q], [(images[r], masks[r])], matcher, num_classes, tau=cfg.tau, k=k, patch=cfg.patch)[0],
        "gt-coordinates": lambda q, r: gt_coordinate_labels(store, q, r, masks[r]),
    }
    classes = scored_classes(num_classes)
    result = {"test": str(args.test), "matcher": str(args.matcher), "refs": refs, "queries": len(queries),
              "classes": len(classes), "k": k, "tau": cfg.tau, "miou": {}, "seconds": {}}
    for method, predict in methods.items():
        start = time.perf_counter()
        per_ref = []
        for r in refs:
            inter = np.zeros(num_classes, np.int64)
            union = np.zeros(num_classes, np.int64)
            for q in queries:
                i, u = intersection_union(predict(q, r), masks[q], num_classes)
                inter += i
                union += u
            per_ref.append(float(class_iou(inter, union)[classes].mean()))
        result["miou"][method] = float(np.mean(per_ref))
        result["seconds"][method] = time.perf_counter() - start
        if not args.json:
            print(f"{method:24s} mIoU {100 * result['miou'][method]:6.2f}   ({result['seconds'][method]:.1f} s)")
    result["correlation_minus_identity"] = result["miou"]["correlation"] - result["miou"]["identity"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"correlation − identity: {100 * result['correlation_minus_identity']:+.2f} mIoU points "
              f"({len(refs)} references × {len(queries)} queries, {len(classes)} classes)")


if __name__ == "__main__":
    main()
