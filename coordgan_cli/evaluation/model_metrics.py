"""The model metrics of ``coordgan evaluate``: FID of generated samples, swap disentanglement and
encoder reconstruction — each an entry of the report, ``{"available": False, "reason"}`` when not
computed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coordgan_cli.data.benchmarks import Benchmark

NO_MODEL = "needs a model (--ckpt); only precomputed maps were given (--store)"


def default_fid_cache() -> Path:
    """``$XDG_CACHE_HOME/coordgan/fid`` (``~/.cache/coordgan/fid``): real-set FID statistics."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coordgan" / "fid"


def _fid(model: Any, request: Any, device: Any, bars: Any) -> dict:
    from coordgan_cli.metrics.generation import generated_fid

    if request.fid_real is None:
        return {"available": False, "reason": "not asked for: pass --fid-real DIR (a folder of real images)"}
    with bars() as task:
        on_real, on_fake = task("FID real images", None), task("FID generated", request.fid_samples)
        return generated_fid(model, request.fid_real, samples=request.fid_samples, seed=request.seed, device=device,
                             cache_dir=request.fid_cache if request.fid_cache is not None else default_fid_cache(),
                             batch_size=request.batch, on_real=on_real, on_fake=on_fake)


def _disentanglement(model: Any, distance: Any, request: Any, bars: Any) -> dict:
    from coordgan_cli.metrics.generation import IDENTITY_UNAVAILABLE, swap_distances

    if request.swap_pairs == 0:
        return {"available": False, "reason": "skipped (--swap-pairs 0)",
                "identity": {"available": False, "reason": IDENTITY_UNAVAILABLE}}
    with bars() as task:
        # A seed stream of its own, so changing --fid-samples does not change the swap pairs.
        return swap_distances(model, distance, pairs=request.swap_pairs, seed=request.seed + 1_000_003,
                              batch_size=request.batch, on_batch=task("swap pairs", request.swap_pairs))


def _reconstruction(model: Any, distance: Any, bench: Benchmark, request: Any, bars: Any) -> dict:
    from coordgan_cli.io.images import read_image
    from coordgan_cli.metrics.generation import reconstruction_errors

    if model.encoder is None:
        return {"available": False, "reason": f"{model.checkpoint_path.name} is a generator checkpoint: "
                "reconstruction needs an encoder checkpoint"}
    if request.recon_images == 0:
        return {"available": False, "reason": "skipped (--recon-images 0)"}
    samples = (bench.references + bench.queries)[:request.recon_images]
    with bars() as task:
        rec = reconstruction_errors(model, [read_image(s.image) for s in samples], distance, batch_size=request.batch,
                                    on_batch=task("reconstruction", len(samples)))
    rec["names"] = [s.name for s in samples]
    return rec


def model_metrics(model: Any, bench: Benchmark, request: Any, *, device: Any, bars: Any) -> dict:
    """``fid``, ``disentanglement`` and ``reconstruction`` entries for ``request``
    (an ``EvaluationRequest``) on ``model`` (a loaded correspondence model, or None)."""
    from coordgan_cli.metrics.generation import IDENTITY_UNAVAILABLE

    if model is None:
        why = NO_MODEL if request.store is not None else "needs a CoordGAN model (--ckpt or --model)"
        return {"fid": {"available": False, "reason": f"FID {why}"},
                "disentanglement": {"available": False, "reason": f"swap distances {why}",
                                    "identity": {"available": False, "reason": IDENTITY_UNAVAILABLE}},
                "reconstruction": {"available": False, "reason": f"encoder reconstruction {why}"}}
    out = {"fid": _fid(model, request, device, bars)}
    distance = None
    if request.swap_pairs > 0 or (request.recon_images > 0 and model.encoder is not None):
        from coordgan_cli.perceptual import build_perceptual

        distance = build_perceptual(request.perceptual, device)
    out["disentanglement"] = _disentanglement(model, distance, request, bars)
    out["reconstruction"] = _reconstruction(model, distance, bench, request, bars)
    return out
