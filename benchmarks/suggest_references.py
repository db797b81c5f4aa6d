"""Do the references `coordgan suggest` picks beat the first K by name? Class coverage and propagation mIoU.

On a set with part masks (default: the DSMLR car photos, ../shared/data/carparts_dsmlr), for
three ways of choosing K references among the train images —
  * ``first``: the first K by file name (what a user does without help),
  * ``random``: K at random (coverage averaged over --draws draws; mIoU over --random-mious draws),
  * ``suggested``: `coordgan suggest --k K` (the same selection code, seeds --seeds),
— print the number of part classes their masks show (the masks are read here only, never by
the selection), and the mIoU of propagating their masks to every test image with one matcher:
  * ``cosine`` (default, CPU-cheap): each query pixel copies the label of the most similar
    reference pixel (cosine nearest neighbour over all references pooled,
    ``metrics.protocol.cosine_nn_pooled``) in Inception-v3 hypercolumn features (the FID
    network's Mixed_5d + Mixed_6e maps, 35² and 17², upsampled and concatenated), on a --grid²
    working grid, labels upsampled (nearest) to each test mask;
  * ``correlation``: `coordgan propagate --matcher correlation` (a trained feature matcher,
    --matcher-ckpt or the shipped one, at its working size; labels at each test photo's size);
  * ``features`` / ``classifier``: `coordgan propagate --matcher features|classifier` (the
    real-photo matchers on the pretrained backbone, default the shipped Inception-v3, 512² working
    size; labels at each test photo's size).
The references are suggested from descriptors of --backbone (default inception, as `suggest`).
mIoU: ΣI/ΣU per class over all test images, averaged over the part classes 1..C-1 (``metrics.iou``).

    OMP_NUM_THREADS=1 python benchmarks/suggest_references.py --k 5
    OMP_NUM_THREADS=1 python benchmarks/suggest_references.py --k 5 --matcher correlation --limit 20
    OMP_NUM_THREADS=1 python benchmarks/suggest_references.py --k 5 --matcher features --random-mious 0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from coordgan_cli.io.images import list_images, read_image  # noqa: E402
from coordgan_cli.io.masks import read_mask  # noqa: E402
from coordgan_cli.metrics.iou import IoUAccumulator  # noqa: E402
from convert_realdata import DEFAULT_DATA as SHARED_DATA  # noqa: E402

DEFAULT_DATA = SHARED_DATA / "carparts_dsmlr"
NUM_CLASSES = 19  # background + 18 parts
HYPERCOLUMN_LAYERS = ("mixed_2", "mixed_7")  # Mixed_5d (288 ch, 35²) and Mixed_6e (768 ch, 17²)


def mask_of(image: Path) -> Path:
    return image.parent.parent / "masks" / (image.stem + ".png")


def coverage(images: list[Path], class_sets: dict[Path, set[int]]) -> int:
    return len(set().union(*(class_sets[p] for p in images)))


def suggested(train: list[Path], k: int, seed: int, descriptors: np.ndarray) -> list[Path]:
    from coordgan_cli.selection.select import representatives

    return [train[i] for i in representatives(descriptors, k, seed=seed).indices]


class Hypercolumns:
    """Inception-v3 (the FID network, ``metrics.fid``) intermediate maps, upsampled and concatenated."""

    def __init__(self, device: torch.device) -> None:
        from coordgan_cli.metrics.fid import INPUT_RANGE, load_extractor

        self.layers = load_extractor(device).net.layers
        self.device = device
        self.range = INPUT_RANGE

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) → float32 (C, 35, 35) unit-normalised per layer."""
        lo, hi = self.range
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * (hi - lo) + lo
        maps = []
        for name, layer in self.layers.named_children():
            if name == "pool2":
                break
            x = layer(x)
            if name in HYPERCOLUMN_LAYERS:
                maps.append(F.normalize(F.interpolate(x, size=(35, 35), mode="bilinear", align_corners=False), dim=1))
            if name == HYPERCOLUMN_LAYERS[-1]:
                break
        return torch.cat(maps, dim=1)[0].float().cpu().numpy()


def mious_cosine(ref_sets: list[list[Path]], test: list[Path], hyper: "Hypercolumns", grid: int) -> list[float]:
    """mIoU of each reference set; every test image's features are computed once for all sets."""
    from coordgan_cli.metrics.protocol import cosine_nn_pooled, cosine_pool, resize_labels_nearest

    features = {r: hyper(read_image(r)) for r in dict.fromkeys(r for refs in ref_sets for r in refs)}
    pools = [cosine_pool([(features[r], resize_labels_nearest(read_mask(mask_of(r)), (grid, grid))) for r in refs])
             for refs in ref_sets]
    accs = [IoUAccumulator(NUM_CLASSES) for _ in ref_sets]
    for q in test:
        truth = read_mask(mask_of(q))
        query = hyper(read_image(q))
        for pool, acc in zip(pools, accs):
            acc.update(resize_labels_nearest(cosine_nn_pooled(pool, query, (grid, grid)), truth.shape), truth)
    return [float(acc.class_iou()[1:].mean()) for acc in accs]


def miou_propagate(refs: list[Path], test: list[Path], matcher: str, matcher_ckpt: Path | None, work: Path) -> float:
    from coordgan_cli.cli._common import AppState
    from coordgan_cli.cli.propagate import run_propagate

    queries = work / "queries.txt"
    queries.write_text("".join(f"{q}\n" for q in test))
    out = work / f"run-{len(list(work.glob('run-*')))}"
    run_propagate(AppState(device="cpu", quiet=True), ref=refs, mask=[mask_of(r) for r in refs], queries=str(queries),
                  out=out, matcher=matcher, matcher_ckpt=matcher_ckpt)
    acc = IoUAccumulator(NUM_CLASSES)
    for q in test:
        acc.update(read_mask(out / "labels" / (q.stem + ".png")), read_mask(mask_of(q)))
    return float(acc.class_iou()[1:].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train/ and test/ (images, masks)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=10, help="suggest seeds 0..N-1 for the coverage spread")
    parser.add_argument("--draws", type=int, default=2000, help="random draws for the random coverage")
    parser.add_argument("--random-mious", type=int, default=3, help="random draws scored by mIoU")
    parser.add_argument("--matcher", choices=("cosine", "correlation", "features", "classifier"), default="cosine")
    parser.add_argument("--backbone", default="inception", help="descriptor backbone of the suggestion")
    parser.add_argument("--backbone-weights", type=Path, default=None)
    parser.add_argument("--matcher-ckpt", type=Path, default=None)
    parser.add_argument("--grid", type=int, default=32, help="cosine matcher's working grid side")
    parser.add_argument("--limit", type=int, default=None, help="score on the first N test images only")
    args = parser.parse_args()
    if not (args.data / "train" / "images").is_dir() or not (args.data / "test" / "images").is_dir():
        sys.exit(f"error: {args.data}: no train/images and test/images here (the DSMLR car photos are not "
                 "shipped; pass --data)")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    train = list_images(args.data / "train" / "images")
    test = list_images(args.data / "test" / "images")[: args.limit]
    class_sets = {p: set(np.unique(read_mask(mask_of(p))).tolist()) - {0, 255} for p in train}
    all_classes = len(set().union(*class_sets.values()))

    from coordgan_cli.selection.descriptors import backbone_descriptors

    started = time.perf_counter()
    descriptors, kept = backbone_descriptors(train, args.backbone, args.backbone_weights, device=device)
    assert kept == list(range(len(train)))
    seconds = time.perf_counter() - started

    first = train[: args.k]  # list_images sorts by name
    picks = {s: suggested(train, args.k, s, descriptors) for s in range(args.seeds)}
    rng = np.random.default_rng(0)
    random_cov = [coverage([train[i] for i in rng.choice(len(train), args.k, replace=False)], class_sets)
                  for _ in range(args.draws)]
    seed_cov = [coverage(p, class_sets) for p in picks.values()]
    print(f"{len(train)} train images, {all_classes} part classes; descriptors in {seconds:.1f} s")
    print(f"classes covered by {args.k} references (of {all_classes}):")
    print(f"  first {args.k} by name   {coverage(first, class_sets):5d}   {' '.join(p.name for p in first)}")
    print(f"  random {args.k}          {np.mean(random_cov):5.1f}   (mean of {args.draws} draws; min {min(random_cov)}, "
          f"max {max(random_cov)})")
    print(f"  suggested, seed 0   {seed_cov[0]:5d}   {' '.join(p.name for p in picks[0])}")
    print(f"  suggested, seeds 0-{args.seeds - 1} {np.mean(seed_cov):5.1f}   (min {min(seed_cov)}, max {max(seed_cov)})", flush=True)

    print(f"propagation mIoU on {len(test)} test images, matcher {args.matcher}:", flush=True)
    rows = [(f"first {args.k} by name", first), ("suggested (seed 0)", picks[0])]
    rng = np.random.default_rng(1)
    rows += [(f"random {args.k} #{i + 1}", [train[j] for j in rng.choice(len(train), args.k, replace=False)])
             for i in range(args.random_mious)]
    if args.matcher == "cosine":
        mious = mious_cosine([refs for _, refs in rows], test, Hypercolumns(device), args.grid)
    else:
        with tempfile.TemporaryDirectory(prefix="suggest-bench-") as work:
            mious = []
            for label, refs in rows:
                started = time.perf_counter()
                mious.append(miou_propagate(refs, test, args.matcher, args.matcher_ckpt, Path(work)))
                print(f"  ({label}: {time.perf_counter() - started:.0f} s)", flush=True)
    results = {}
    for (label, refs), value in zip(rows, mious):
        results[label] = value
        print(f"  {label:22s} mIoU {100 * value:5.1f} %   covers {coverage(refs, class_sets):2d} classes")
    randoms = [v for key, v in results.items() if key.startswith("random")]
    if randoms:
        print(f"  random mean            mIoU {100 * np.mean(randoms):5.1f} %")
    print(f"suggested / first-by-name mIoU ratio: {results[rows[1][0]] / max(results[rows[0][0]], 1e-9):.2f}")


if __name__ == "__main__":
    main()
