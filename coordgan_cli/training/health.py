"""Training health of a CoordGAN generator: is it learning correspondences? (issue 14)

Three cheap measurements on a small fixed batch of codes, without gradients, with the
generator's constant noise (the same codes and weights always give the same numbers):

- ``map_displacement_px``: how far the correspondence maps of two structure codes differ, mean
  ‖c_A − c_B‖ over pixels and pairs, in pixels of the map grid. A warp network that ignores the
  structure code gives 0; the paper's models move parts by several pixels between faces.
- ``layout_structure`` / ``layout_texture`` / ``layout_ratio``: how much the layout changes under
  a structure swap G(s′, t) and under a texture swap G(s, t′), each measured against G(s, t) as
  :func:`~coordgan_cli.losses.layout_change` (1 − correlation of gradient-magnitude maps), and
  their ratio structure / texture. A disentangled model moves its layout with the structure code
  (ratio well above 1; the real synthetic faces: 0.59 / 0.31 ≈ 1.9); a ratio below 1 means the
  texture code owns the layout — "inverted".
- ``map_follow``: how far the image follows a shifted correspondence map. The map of each code
  is translated by a few map pixels (about 1/16 of the grid) and the image drawn again; the image
  shift that best explains the change (searched in half-pixel steps from 0 to twice the map
  shift) divided by the map shift. 1 = the image is drawn from the map; 0 = the synthesis ignores
  the map (the layout then comes from elsewhere: the texture code or the noise).

And, for an encoder checkpoint, whether the encoder inverts its own generator
(:func:`measure_encoder_health`): the generator draws images from fixed codes, the encoder maps
them back, and the recovered correspondence maps are compared with the true ones —
``encoder_map_error_px`` (mean ‖ĉ − c‖ in pixels of the map grid) against ``mean_map_error_px``
(the error of answering every image with the batch's mean map, i.e. of ignoring the image), and
``encoder_recovery`` = 1 − their ratio (1 = exact, 0 = no better than one map for all). This needs
no labels; a low value means the encoder has not learnt the generator's poses. A high value does
not promise good labels on photos: the generator's images can differ from them (README "Where the
labels are lost").
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from coordgan_cli import losses

HEALTH_KEYS = ("map_displacement_px", "layout_structure", "layout_texture", "layout_ratio", "map_follow")
HEALTH_CODES = 8  # a small fixed batch (4 pairs): cheap enough for every log line
ENCODER_HEALTH_KEYS = ("encoder_map_error_px", "mean_map_error_px", "encoder_recovery")
ENCODER_HEALTH_CODES = 32  # its own fixed batch: a mean map needs more than a handful of images


def health_codes(latent_dim: int, seed: int, n: int = HEALTH_CODES,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (structure z, texture z) batch of the health probe: (n, D) each, from ``seed`` alone
    (a private CPU generator: the global random state is untouched, so training stays resumable)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) * 7919 + 14)
    z = torch.randn(2, n, latent_dim, generator=gen)
    return z[0].to(device), z[1].to(device)


def translate(images: torch.Tensor, dx: float) -> torch.Tensor:
    """Images (B, C, H, W) moved right by ``dx`` pixels (bilinear, border values repeated)."""
    b, _, h, w = images.shape
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * dx / w  # sample from x − dx
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def estimate_shift(before: torch.Tensor, after: torch.Tensor, max_shift: float, step: float = 0.5) -> torch.Tensor:
    """Per sample, the horizontal shift s in [0, max_shift] (``step`` apart) that makes
    ``translate(before, s)`` closest to ``after`` (mean absolute difference over the central part,
    away from the borders the translation fills): (B,) in pixels."""
    w = before.shape[-1]
    margin = int(math.ceil(max_shift)) + 1
    candidates = torch.arange(0.0, max_shift + 1e-6, step, device=before.device)
    errors = []
    for s in candidates.tolist():
        diff = (translate(before, s) - after)[..., margin:w - margin]
        errors.append(diff.abs().flatten(1).mean(1))
    return candidates[torch.stack(errors, 1).argmin(1)]


@torch.no_grad()
def measure_health(generator: nn.Module, z_structure: torch.Tensor, z_texture: torch.Tensor,
                   map_shift_px: Optional[int] = None) -> dict[str, float]:
    """The health numbers (see the module docstring) of ``generator`` for codes (B, D), B even:
    pairs (i, i ^ 1) exchange codes. Returns {key: float} for every key of ``HEALTH_KEYS``."""
    g = generator
    n = z_structure.shape[0]
    if n < 2 or n % 2:
        raise ValueError(f"the health probe needs an even number of codes (pairs), got {n}")
    partner = torch.arange(n, device=z_structure.device) ^ 1
    w_s = g.map_structure(z_structure)
    w_plus = g.texture_plus(g.map_texture(z_texture))
    corr = g.correspondence(w_s)
    size = corr.shape[-1]
    displacement = (corr - corr[partner]).norm(dim=1).mean() * (size - 1) / 2

    shift = map_shift_px if map_shift_px is not None else max(1, round(size / 16))
    shifted = translate(corr, float(shift))
    images = g.synthesize(torch.cat([corr, corr[partner], corr, shifted]),
                          torch.cat([w_plus, w_plus, w_plus[partner], w_plus]), noise="const")
    image, struct_swap, tex_swap, moved = images.chunk(4)
    layout_structure = losses.layout_change(image, struct_swap).mean()
    layout_texture = losses.layout_change(image, tex_swap).mean()

    image_shift = shift * image.shape[-1] / size
    follow = estimate_shift(image, moved, 2 * image_shift).mean() / image_shift
    return {
        "map_displacement_px": float(displacement),
        "layout_structure": float(layout_structure),
        "layout_texture": float(layout_texture),
        "layout_ratio": float(layout_structure / layout_texture.clamp_min(1e-6)),
        "map_follow": float(follow),
    }


@torch.no_grad()
def measure_encoder_health(encoder: nn.Module, generator: nn.Module, z_structure: torch.Tensor,
                           z_texture: torch.Tensor) -> dict[str, float]:
    """How well ``encoder`` recovers the correspondence maps of ``generator``'s own images drawn from
    codes (B, D) with constant noise (see the module docstring). Returns {key: float} for every key
    of ``ENCODER_HEALTH_KEYS``."""
    g = generator
    if z_structure.shape[0] < 2:
        raise ValueError(f"the encoder probe needs at least 2 codes, got {z_structure.shape[0]}")
    corr = g.correspondence(g.map_structure(z_structure))
    images = g.synthesize(corr, g.texture_plus(g.map_texture(z_texture)), noise="const")
    recovered = g.correspondence(encoder.encode_structure(images))
    px = (corr.shape[-1] - 1) / 2
    error = (recovered - corr).norm(dim=1).mean() * px
    spread = (corr - corr.mean(0, keepdim=True)).norm(dim=1).mean() * px
    return {
        "encoder_map_error_px": float(error),
        "mean_map_error_px": float(spread),
        "encoder_recovery": float(1 - error / spread.clamp_min(1e-6)),
    }


def inverted_layout_warning(values: dict[str, float], step: int) -> str:
    """The one-time warning text for an inverted layout ratio at ``step``."""
    return (f"warning: layout ratio {values['layout_ratio']:.2f} < 1 at step {step}: a texture swap changes the "
            f"layout more ({values['layout_texture']:.3f}) than a structure swap does "
            f"({values['layout_structure']:.3f}); maps of different structure codes differ by "
            f"{values['map_displacement_px']:.2f} px and the image follows a shifted map {values['map_follow']:.2f} — "
            "the structure code does not own the layout, so correspondences are not being learnt. See README "
            "\"The objective, and how to tell whether a run is learning\"")
