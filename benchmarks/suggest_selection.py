"""Selection at folder scale: ours (k-means++ + Lloyd + nearest member, row blocks) vs textbook k-medoids.

The straightforward k-medoids (Voronoi iteration on a full N×N distance matrix, the same
k-means++ seeding) needs N² floats — 40 GB at N = 100 000 — so it runs only at the smaller N;
ours is O(N·K·D) time and O(N·D + N·K) memory. Printed side by side: seconds, the distance
memory each needs, and the medoid cost (sum of each image's squared cosine distance to its
nearest pick; lower is better) as the ratio ours / textbook. Descriptors: clustered Gaussian
vectors with a shared positive offset, like CNN pool features.

    OMP_NUM_THREADS=1 python benchmarks/suggest_selection.py
    OMP_NUM_THREADS=1 python benchmarks/suggest_selection.py --sizes 2000 100000 --dim 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordgan_cli.selection.select import _kmeanspp, _sq_dist, normalise, representatives  # noqa: E402


def descriptors(n: int, dim: int, groups: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim), dtype=np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 8192):  # in blocks: no N×D float64 temporary
        block = x[s:s + 8192]
        block[:] = centres[rng.integers(0, groups, len(block))] + 0.8 * rng.standard_normal(block.shape, dtype=np.float32)
    np.abs(x, out=x)
    x += 1.0  # ≥ 0 with a common component, as ReLU pool features
    return x


def textbook_kmedoids(x: np.ndarray, k: int, seed: int, iterations: int = 20) -> list[int]:
    """Voronoi-iteration k-medoids on the full N×N matrix (the straightforward method)."""
    y = normalise(x)
    full = _sq_dist(y, y)  # N×N
    medoids = _kmeanspp(y, k, None, np.ones(len(y), bool), np.random.default_rng(seed))
    for _ in range(iterations):
        assign = full[:, medoids].argmin(axis=1)
        new = []
        for j in range(k):
            members = np.flatnonzero(assign == j)
            new.append(int(members[full[np.ix_(members, members)].sum(axis=1).argmin()]) if len(members) else medoids[j])
        if new == medoids:
            break
        medoids = new
    return medoids


def cost(x: np.ndarray, picks: list[int]) -> float:
    y = normalise(x)
    return float(_sq_dist(y, y[picks]).min(axis=1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 100_000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--textbook-max", type=int, default=5000, help="largest N the N×N method is run at")
    parser.add_argument("--compare-full", action="store_true", help="also run ours without the 20 000-image "
                        "sample (Lloyd on all N) and print its time and the cost ratio sampled / full")
    args = parser.parse_args()
    print(f"D = {args.dim}, K = {args.k}")
    print(f"{'N':>8} {'ours s':>8} {'textbook s':>11} {'time ratio':>10} {'ours dist MB':>12} "
          f"{'textbook dist MB':>16} {'memory ratio':>12} {'cost ours/textbook':>18}")
    for n in args.sizes:
        x = descriptors(n, args.dim, groups=3 * args.k)
        start = time.perf_counter()
        ours = representatives(x, args.k, seed=0).indices
        t_ours = time.perf_counter() - start
        ours_mb = min(n, 8192) * (args.k + 1) * 4 / 2**20  # one distance block at a time
        text_mb = n * n * 4 / 2**20
        if n <= args.textbook_max:
            start = time.perf_counter()
            ref = textbook_kmedoids(x, args.k, seed=0)
            t_ref = time.perf_counter() - start
            print(f"{n:8d} {t_ours:8.2f} {t_ref:11.2f} {t_ref / t_ours:10.1f} {ours_mb:12.2f} {text_mb:16.1f} "
                  f"{text_mb / ours_mb:12.0f} {cost(x, ours) / cost(x, ref):18.3f}", flush=True)
        else:
            print(f"{n:8d} {t_ours:8.2f} {'(N×N)':>11} {'—':>10} {ours_mb:12.2f} {text_mb:16.1f} "
                  f"{text_mb / ours_mb:12.0f} {'—':>18}", flush=True)
        if args.compare_full and n > 20_000:
            start = time.perf_counter()
            full = representatives(x, args.k, seed=0, sample=n).indices
            t_full = time.perf_counter() - start
            print(f"{'':8s} without the sample: {t_full:.2f} s ({t_full / t_ours:.1f}× ours), "
                  f"cost sampled / full {cost(x, ours) / cost(x, full):.4f}", flush=True)


if __name__ == "__main__":
    main()
