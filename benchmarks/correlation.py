"""Chunked top-k correlation vs the dense (HW)² CoCosNet correlation, side by side.

For each grid size (64², 128², 256² by default) the same query/reference features (a fixed
randomly initialised ``FeatureMatcher``, or a trained one with ``--checkpoint``, applied to a
synthetic face (``coordgan synth``'s renderer, seed 777) and an affinely warped copy of it) are
matched by
  * dense:   ``correlation_dense`` — the full (HW)² softmax matrix;
  * chunked: ``correlation_chunked(k=K)`` — query chunks, top-k reference positions.
Each method runs in its own subprocess so its peak memory is measured honestly: the rise of the
process's resident high-water mark (VmHWM, reset just before the call through
``/proc/self/clear_refs``) above the resident size at that moment, with
the address space capped at (current size + ``--cap-gib``) so that a dense matrix that does not
fit fails cleanly instead of swapping the machine. Label agreement is the share of query pixels
whose arg-max label is the same as the dense result's; where dense cannot run, the reference is
the exact chunked form (``k=None``, every reference position, still bounded memory).

Then the largest dense size within the cap is probed: the dense peak per matrix element is
calibrated on the sizes that ran, the largest multiple of 8 predicted to fit is tried, and
smaller ones after it until one runs.

Finally the whole per-image path of ``propagate --matcher correlation`` is timed end to end with
default settings (the shipped matcher at its working size, labels carried back to the image's
size with guided refinement; ``propagate_correlation``: one reference encoded, one query
labelled; two synthetic faces with their 16 true parts): ``seconds_512`` for a 512×512 query and
reference, ``seconds_800x600`` for 800×600 ones (a typical photo); ``*_query`` is the part a folder run pays per image (the reference is
encoded once per run). ``--native`` adds the 512×512 figure at the images' own resolution (the
behaviour before working sizes; minutes on a CPU; one run, no warm-up) for the ratio.

    python benchmarks/correlation.py [--json] [--sizes 64 128 256] [--k 128] [--cap-gib 8]
                                     [--threads 2] [--native]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordgan_cli.correspondence.correlation import (  # noqa: E402
    correlation_chunked,
    correlation_dense,
    normalise_features,
    one_hot_mask,
)
from coordgan_cli.models.matcher import FeatureMatcher  # noqa: E402

NUM_CLASSES = 6


def _face(index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic face (image uint8 (H, W, 3), its part mask) rendered at the larger side and
    resized to ``size`` = (H, W)."""
    import cv2

    from coordgan_cli.data.synthetic import generate_sample

    sample = generate_sample("faces", index, size=max(size), seed=777)
    image = cv2.resize(sample.image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image, cv2.resize(sample.mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    """The process's resident high-water mark (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs), so that the peak
    measured next belongs to the method alone and not to imports or input loading."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_inputs(size: int, checkpoint: str | None) -> dict[str, torch.Tensor]:
    """Normalised features of a query and a reference at size², and the reference's one-hot mask."""
    import cv2

    ref, _ = _face(0, (size, size))
    # Query: the reference rotated by 8°, scaled by 0.9 and shifted — a plausible second view.
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), 8, 0.9)
    matrix[:, 2] += (0.04 * size, -0.03 * size)
    query = cv2.warpAffine(ref, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # A part-like reference mask: grey-level bands, smoothed so that regions are blobs.
    grey = cv2.GaussianBlur(cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY), (0, 0), size / 64)
    mask = np.digitize(grey, np.quantile(grey, np.linspace(0, 1, NUM_CLASSES + 1)[1:-1])).astype(np.uint8)

    if checkpoint:
        from coordgan_cli.training.matcher import load_matcher

        matcher, _ = load_matcher(checkpoint, torch.device("cpu"))
    else:
        torch.manual_seed(0)
        matcher = FeatureMatcher(width=32, depth=3, out_channels=64, projection=False).eval()
    with torch.no_grad():
        images = torch.from_numpy(np.stack([query, ref])).permute(0, 3, 1, 2).float() / 127.5 - 1
        feats = normalise_features(matcher(images))
    return {"query": feats[0].contiguous(), "reference": feats[1].contiguous(),
            "onehot": one_hot_mask(torch.from_numpy(mask), NUM_CLASSES)}


def end_to_end(size: tuple[int, int], work_size: int | None, repeats: int = 3, warm_up: bool = True) -> dict:
    """Seconds of ``propagate_correlation`` (one reference, one query, both ``size`` = (H, W)) with
    the shipped matcher at ``work_size`` (None: native): the median of ``repeats`` runs after a
    warm-up, and of the query alone with the reference prepared once."""
    from coordgan_cli.correspondence.correlation import (correlation_probabilities, prepare_correlation_references,
                                                         propagate_correlation)
    from coordgan_cli.inference import resolve_matcher
    from coordgan_cli.training.matcher import load_matcher

    from coordgan_cli.data.categories import get_category

    ref, mask = _face(0, size)
    query, _ = _face(1, size)
    classes = get_category("faces").num_classes
    network, cfg = load_matcher(resolve_matcher(None), torch.device("cpu"))
    kwargs = dict(tau=cfg.tau, k=cfg.k, patch=cfg.patch, work_size=work_size)
    if warm_up:
        propagate_correlation(query, [(ref, mask)], network, classes, **kwargs)
    whole, per_query = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        propagate_correlation(query, [(ref, mask)], network, classes, **kwargs)
        whole.append(time.perf_counter() - start)
    prepared = prepare_correlation_references([(ref, mask)], network, classes, patch=cfg.patch,
                                              work_size=work_size)
    for _ in range(repeats if warm_up else 0):
        start = time.perf_counter()
        correlation_probabilities(query, prepared, network, tau=cfg.tau, k=cfg.k, patch=cfg.patch, work_size=work_size)
        per_query.append(time.perf_counter() - start)
    return {"seconds": float(np.median(whole)), "seconds_query": float(np.median(per_query)) if per_query else None}


def worker(method: str, inputs_path: str, k: int, cap_bytes: int, labels_path: str) -> dict:
    """Run one method on saved inputs; return time and peak-memory rise. Called in a subprocess."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    inputs = torch.load(inputs_path, weights_only=True)
    # A tiny warm-up so that one-off allocator/thread-pool set-up is not charged to the method.
    correlation_chunked(inputs["query"][:, :2, :2], inputs["reference"][:, :2, :2], inputs["onehot"][:, :2, :2], k=1,
                        normalise=False)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size_bytes() + cap_bytes, resource.RLIM_INFINITY))
    reset = _reset_hwm()
    before_max, before_rss = _hwm_bytes(), _rss_bytes()
    start = time.perf_counter()
    try:
        if method == "dense":
            out = correlation_dense(inputs["query"], inputs["reference"], inputs["onehot"], normalise=False)
        else:
            out = correlation_chunked(inputs["query"], inputs["reference"], inputs["onehot"],
                                      k=None if method == "exact" else k, normalise=False)
    except (RuntimeError, MemoryError) as exc:
        return {"ok": False, "error": str(exc).splitlines()[0][:200]}
    seconds = time.perf_counter() - start
    peak = _hwm_bytes() - before_rss
    np.save(labels_path, out.probabilities.argmax(0).to(torch.uint8).numpy())
    return {"ok": True, "seconds": seconds, "peak_mib": peak / 2**20,
            "hwm_reset": reset, "baseline_slack_mib": (before_max - before_rss) / 2**20}


def run_worker(method: str, inputs_path: Path, k: int, cap_bytes: int, labels_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(inputs_path), str(k), str(cap_bytes), str(labels_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"ok": False, "error": f"worker exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256],
                        help="grid sizes for dense vs chunked (none: only the end-to-end timings)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")),
                        help="torch/OpenCV threads for every measurement")
    parser.add_argument("--native", action="store_true", help="also time the end-to-end path at native "
                        "resolution (no working size; minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs per figure (median)")
    parser.add_argument("--k", type=int, default=128, help="reference positions kept per query (top-k)")
    parser.add_argument("--cap-gib", type=float, default=8.0, help="memory cap for any one method")
    parser.add_argument("--no-probe", action="store_true", help="skip probing the largest dense size")
    parser.add_argument("--checkpoint", default=None, help="a trained matcher checkpoint (default: random init)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, inputs_path, k, cap, labels = args.worker
        print(json.dumps(worker(method, inputs_path, int(k), int(cap), labels)))
        return

    os.environ["BENCH_THREADS"] = str(args.threads)
    cap = int(args.cap_gib * 2**30)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result: dict = {"k": args.k, "tau": 0.01, "cap_gib": args.cap_gib, "threads": int(os.environ.get("BENCH_THREADS", "2")),
                    "features": args.checkpoint or "random-init FeatureMatcher(width=32, depth=3, out=64)",
                    "sizes": {}}
    dense_bytes_per_elem: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            inputs_path = tmp / f"inputs{size}.pt"
            torch.save(make_inputs(size, args.checkpoint), inputs_path)
            entry: dict = {"elements": (size * size) ** 2}
            runs = {}
            for method in ("chunked", "dense"):
                runs[method] = run_worker(method, inputs_path, args.k, cap, tmp / f"{method}{size}.npy")
                entry[method] = runs[method]
                if runs[method]["ok"]:
                    log(f"{size}²  {method:8s} {runs[method]['seconds']:8.2f} s  peak +{runs[method]['peak_mib']:9.1f} MiB")
                else:
                    log(f"{size}²  {method:8s} failed within the {args.cap_gib} GiB cap: {runs[method]['error']}")
            reference = "dense"
            if not runs["dense"]["ok"]:
                reference = "exact"
                runs["exact"] = run_worker("exact", inputs_path, args.k, cap, tmp / f"exact{size}.npy")
                entry["exact"] = runs["exact"]
            else:
                dense_bytes_per_elem.append(runs["dense"]["peak_mib"] * 2**20 / entry["elements"])
            if runs["chunked"]["ok"] and runs[reference]["ok"]:
                a = np.load(tmp / f"chunked{size}.npy")
                b = np.load(tmp / f"{reference}{size}.npy")
                entry["agreement"] = float((a == b).mean())
                entry["agreement_reference"] = reference
                log(f"{size}²  label agreement of top-{args.k} with {reference}: {entry['agreement']:.4f}")
            if runs["chunked"]["ok"] and runs["dense"]["ok"]:
                entry["memory_ratio"] = runs["dense"]["peak_mib"] / max(runs["chunked"]["peak_mib"], 1e-3)
                entry["speedup"] = runs["dense"]["seconds"] / runs["chunked"]["seconds"]
                log(f"{size}²  dense/chunked memory ×{entry['memory_ratio']:.1f}, time ×{entry['speedup']:.2f}")
            result["sizes"][str(size)] = entry

        ran = [s for s in args.sizes if result["sizes"][str(s)]["dense"]["ok"]]
        result["largest_dense_size_benchmarked"] = max(ran) if ran else None
        largest = max(ran) if ran else None
        if not args.no_probe and dense_bytes_per_elem:
            per_elem = max(dense_bytes_per_elem)
            predicted = int((cap / per_elem) ** 0.25) // 8 * 8
            result["dense_bytes_per_element"] = per_elem
            tried = []
            for size in range(predicted + 16, (largest or 8), -8):
                if size in ran:
                    break
                inputs_path = tmp / f"probe{size}.pt"
                torch.save(make_inputs(size, args.checkpoint), inputs_path)
                run = run_worker("dense", inputs_path, args.k, cap, tmp / "probe.npy")
                tried.append({"size": size, **run})
                log(f"probe dense {size}²: " + ("ran, peak +%.0f MiB" % run["peak_mib"] if run["ok"] else "does not fit"))
                inputs_path.unlink()
                if run["ok"]:
                    largest = max(largest or 0, size)
                    break
            result["dense_probe"] = tried
        result["largest_dense_size"] = largest

    at128 = result["sizes"].get("128", {})
    result["memory_ratio_128"] = at128.get("memory_ratio")
    result["agreement_128"] = at128.get("agreement")

    import cv2

    from coordgan_cli.inference import resolve_matcher
    from coordgan_cli.training.matcher import load_matcher, matcher_work_size

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    path = resolve_matcher(None)
    work_size = matcher_work_size(path, load_matcher(path)[1])
    result["end_to_end"] = {"matcher": str(path.name), "work_size": work_size, "threads": args.threads,
                            "load_average": os.getloadavg()[0]}
    for key, size in (("512", (512, 512)), ("800x600", (600, 800))):
        timing = end_to_end(size, work_size, args.repeats)
        result[f"seconds_{key}"] = timing["seconds"]
        result[f"seconds_{key}_query"] = timing["seconds_query"]
        log(f"end to end {key}: {timing['seconds']:.2f} s (query alone {timing['seconds_query']:.2f} s), "
            f"work size {work_size}, {args.threads} thread(s)")
        if args.native and key == "512":
            native = end_to_end(size, None, 1, warm_up=False)
            result[f"seconds_{key}_native"] = native["seconds"]
            result[f"speedup_{key}"] = native["seconds"] / timing["seconds"]
            log(f"end to end {key} at native resolution: {native['seconds']:.1f} s (×{result[f'speedup_{key}']:.0f})")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"memory_ratio_128 = {result['memory_ratio_128']}, agreement_128 = {result['agreement_128']}, "
              f"largest_dense_size = {result['largest_dense_size']} (cap {args.cap_gib} GiB), "
              f"seconds_512 = {result['seconds_512']:.2f}, seconds_800x600 = {result['seconds_800x600']:.2f}")


if __name__ == "__main__":
    main()
