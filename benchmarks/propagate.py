"""Label propagation: our exact vote against the dense Nq × Nr matrix, side by side.

At 128² (the paper's protocol), soft vote τ = 0.01, one reference → one query, both maps smooth
seeded warps of the canonical grid with parts painted in canonical space:

- ours: ``prepare_references`` + ``vote`` (grid bounds, exact windows), end to end: labels and
  confidence — what ``propagate`` writes (``propagate_map``'s default); the per-pixel distance to
  the nearest reference coordinate is an extra nearest-neighbour search over every pixel, timed
  separately at 512² (``seconds_512_with_distance``);
- dense: the full 16 384 × 16 384 float32 distance / weight matrices (what the reference
  evaluation builds), ``vote_dense(chunk=None)``.

Reports time (best of --repeats for ours, one run of dense), peak traced memory (tracemalloc, in
separate runs: NumPy allocations), label agreement, and the seconds per 512² query of our vote
end to end (reference preparation included). Wall-clock times on a shared machine are noisy.

    python benchmarks/propagate.py [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc

import numpy as np

from coordgan_cli.correspondence.vote import prepare_references, vote, vote_dense


def smooth_warp(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    a = rng.normal(0, 0.15, 4)
    warped = np.stack([x + a[0] * np.sin(np.pi * y + a[1]), y + a[2] * np.sin(np.pi * x + a[3])])
    return np.tanh(1.2 * warped).astype(np.float32)


def parts_mask(cmap: np.ndarray) -> np.ndarray:
    x, y = cmap
    lab = np.zeros(x.shape, np.int64)
    r = np.hypot(x, y)
    lab[r < 0.7] = 1
    lab[(r < 0.7) & (y < -0.2)] = 2
    lab[np.hypot(x - 0.25, y + 0.1) < 0.12] = 3
    lab[np.hypot(x + 0.25, y + 0.1) < 0.12] = 4
    lab[np.hypot(x, y - 0.35) < 0.1] = 5
    return lab


def pair(n: int):
    ref, qry = smooth_warp(n, 1), smooth_warp(n, 2)
    return qry.reshape(2, -1).T.copy(), [(ref.reshape(2, -1).T.copy(), parts_mask(ref).ravel())]


def ours(query, refs, classes, tau, distance=False):
    prepared = prepare_references(refs, classes, tau)
    return vote(query, prepared, classes, tau=tau, distance=distance)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def peak_memory(fn, *args) -> int:
    """Peak traced allocation of one call (a separate run: tracing slows the timed runs)."""
    tracemalloc.start()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per size (best is kept)")
    args = parser.parse_args()
    tau, classes = 0.01, 6

    # Warm-up: imports (SciPy FFT, KD-tree) are not part of a vote.
    q, r = pair(32)
    ours(q, r, classes, tau)

    q, r = pair(128)
    dense = lambda: vote_dense(q, r, classes, tau=tau, dtype=np.float32)  # noqa: E731
    res_ours, t_ours = min((timed(ours, q, r, classes, tau) for _ in range(args.repeats)), key=lambda x: x[1])
    res_dense, t_dense = timed(dense)
    m_ours = peak_memory(ours, q, r, classes, tau)
    m_dense = peak_memory(dense)
    agreement = float((res_ours.labels == res_dense.labels).mean())
    conf_err = np.abs(res_ours.confidence - res_dense.confidence)

    q512, r512 = pair(512)
    t512 = min(timed(ours, q512, r512, classes, tau)[1] for _ in range(args.repeats))
    t512_dist = min(timed(ours, q512, r512, classes, tau, True)[1] for _ in range(args.repeats))

    out = {
        "size": 128, "tau": tau, "classes": classes,
        "seconds_ours": round(t_ours, 4), "seconds_dense": round(t_dense, 3),
        "peak_bytes_ours": int(m_ours), "peak_bytes_dense": int(m_dense),
        "time_ratio": round(t_dense / t_ours, 1),
        "memory_ratio": round(m_dense / m_ours, 1),
        "agreement": agreement,
        "confidence_mean_abs_error": float(conf_err.mean()),
        "confidence_max_abs_error": float(conf_err.max()),
        "seconds_512": round(t512, 3),
        "seconds_512_with_distance": round(t512_dist, 3),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"128², τ = {tau}, one reference → one query ({classes} classes)")
    print(f"  ours  {t_ours * 1000:8.1f} ms   peak {m_ours / 2**20:8.1f} MiB")
    print(f"  dense {t_dense * 1000:8.1f} ms   peak {m_dense / 2**20:8.1f} MiB")
    print(f"  time ratio {out['time_ratio']}×, memory ratio {out['memory_ratio']}×, label agreement {agreement:.4%}")
    print(f"  confidence |ours − dense|: mean {conf_err.mean():.4f}, max {conf_err.max():.4f}")
    print(f"512² query, end to end: {t512:.3f} s ({t512_dist:.3f} s with the distance map)")


if __name__ == "__main__":
    main()
