"""Which global descriptor makes `suggest` pick references that cover the most part classes?

For each descriptor built from the offline Inception-v3 (the FID network, ``metrics.fid``) — the
Mixed_6b / Mixed_6e / Mixed_7c maps (17², 17², 8²) average-pooled on a g×g grid (g = 1: the
global pool vector; g > 1 keeps where things are, e.g. which side the front of a car is on), each
cell L2-normalised, with and without centring on the set's mean — run `suggest`'s k-medoids
(``selection.select.representatives``) with seeds 0..S-1 and count the part classes the picks'
masks show (the masks are read here only). Also farthest-first. "raw" is the plain cosine of
the descriptors (``centre=False``); `suggest` uses the centred, pooled Mixed_7c vector.

    OMP_NUM_THREADS=1 python benchmarks/suggest_descriptors.py --k 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from coordgan_cli.io.images import list_images, read_image  # noqa: E402
from coordgan_cli.io.masks import read_mask  # noqa: E402
from coordgan_cli.selection.select import farthest_first, representatives  # noqa: E402
from convert_realdata import DEFAULT_DATA as SHARED_DATA  # noqa: E402

DEFAULT_DATA = SHARED_DATA / "carparts_dsmlr"
LAYERS = {"mixed_4": "Mixed_6b", "mixed_7": "Mixed_6e", "mixed_10": "Mixed_7c"}


@torch.inference_mode()
def layer_maps(paths: list[Path]) -> dict[str, list[torch.Tensor]]:
    from coordgan_cli.metrics.fid import INPUT_RANGE, load_extractor

    layers = load_extractor(torch.device("cpu")).net.layers
    lo, hi = INPUT_RANGE
    out: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
    for p in paths:
        x = torch.from_numpy(read_image(p)).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * (hi - lo) + lo
        for name, layer in layers.named_children():
            if name == "pool2":
                break
            x = layer(x)
            if name in out:
                out[name].append(x[0].clone())
    return out


def grid_descriptor(maps: list[torch.Tensor], g: int) -> np.ndarray:
    t = F.adaptive_avg_pool2d(torch.stack(maps), g)
    return F.normalize(t, dim=1).flatten(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    folder = args.data / "train" / "images"
    if not folder.is_dir():
        sys.exit(f"error: {folder}: not found (the car photos are not shipped; pass --data)")
    torch.set_num_threads(1)
    paths = list_images(folder)
    classes = [set(np.unique(read_mask(p.parent.parent / "masks" / (p.stem + ".png"))).tolist()) - {0, 255}
               for p in paths]
    total = len(set().union(*classes))

    def cover(idx) -> int:
        return len(set().union(*(classes[i] for i in idx)))

    maps = layer_maps(paths)
    print(f"{len(paths)} images, {total} part classes; k-medoids seeds 0-{args.seeds - 1} and farthest-first")
    print(f"{'descriptor':28s} {'D':>6} {'mean':>5} {'min':>4} {'max':>4} {'farthest':>8}")
    for name, label in LAYERS.items():
        for g in (1, 2, 3, 4):
            x = grid_descriptor(maps[name], g)
            for centre in (False, True):
                r = [cover(representatives(x, args.k, seed=s, centre=centre).indices) for s in range(args.seeds)]
                f = cover(farthest_first(x, args.k, centre=centre).indices)
                tag = f"{label} {g}×{g} {'centred' if centre else 'raw'}"
                print(f"{tag:28s} {x.shape[1]:6d} {np.mean(r):5.1f} {min(r):4d} {max(r):4d} {f:8d}", flush=True)


if __name__ == "__main__":
    main()
