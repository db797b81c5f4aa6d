"""Losses of the CoordGAN objective (DESIGN §3) as pure functions.

Tensors in, a loss tensor out: no ``backward()``, no optimiser, no weighting or schedules inside
(the training step owns those). Shapes: images (B, 3, H, W) in [-1, 1]; correspondence maps
(B, 2, H, W) with channel 0 = canonical x, channel 1 = canonical y, in [-1, 1].

The warp loss is the memory-critical one. Rebuilding image A from image B's colours by soft
matching of coordinates is, done naively, an (HW × HW) softmax matrix per pair: 16384² floats
(1 GiB, plus as much again for its gradient) at 128 px. Here it never exists:

* ``distance="squared"`` (default): softmax over B's pixels of −‖c_A − c_B‖² / τ. Expanding,
  −‖a − b‖² = 2a·b − ‖b‖² − ‖a‖², and the last term is constant along the softmax row, so the
  weights equal softmax(q·k / τ) with augmented 3-d queries q = (a_x, a_y, 1) and keys
  k = (2b_x, 2b_y, −‖b‖²). That is exactly scaled dot-product attention, whose fused kernels
  (flash / memory-efficient on GPU, flash on CPU) keep O(HW) memory in forward and backward.
* ``distance="euclidean"``: softmax of −‖c_A − c_B‖ / τ, the formula as written in the paper's
  supplement. No attention form exists for it, so it is computed in query chunks under
  activation checkpointing: memory O(chunk × HW), and the backward recomputes one chunk at a
  time.

The temperature decides what the loss can see. A kernel's *reach* is the distance at which a
match's weight has fallen by e: τ for the Euclidean kernel, √τ for the squared one. The paper's
τ = 0.01 (Euclidean) reaches 0.01 canonical units = 0.64 px of its 128 px map; the same τ with
the squared distance reaches 0.1 units = 6.4 px, and a rebuilt image is then a blur that barely
changes when the map is misaligned by a few pixels (measured: 0.71 → 0.75 for 8 px). So the
squared kernel must get τ = reach², and the reach must be stated in pixels of the map it works on:
:func:`warp_temperature` derives τ from ``reach_px`` (default: the paper's 0.635 px) and the map
size. Why squared with a derived τ rather than the paper's Euclidean form: at the same reach the
Gaussian (squared) kernel is the sharper one — the Euclidean kernel's exponential tail, summed
over the ring of pixels at each distance, keeps a large share of the weight far away (measured on
a 32² map at 0.635 px reach: the Euclidean rebuild is blind to a 4-px shift, the squared one is
not) — and it is exact attention (fused kernels, O(HW) memory, the fastest path on every device).
``soft_warp_dense`` is the straightforward reference for both forms (tests and benchmarks).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Distance = Literal["squared", "euclidean"]
PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Adversarial losses and R1


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: mean softplus(−D(real)) + mean softplus(D(fake)). Scalar."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(−D(fake)). Scalar."""
    return F.softplus(-fake_pred).mean()


def d_r1_loss(real_pred: torch.Tensor, real_input: torch.Tensor) -> torch.Tensor:
    """R1 penalty: batch mean of ‖∂ΣD(x)/∂x‖² per sample.

    ``real_input`` must require grad and ``real_pred`` must be computed from it. The graph is
    kept (``create_graph``) so the penalty can be back-propagated. The caller multiplies by
    γ/2 and by the lazy interval.
    """
    (grad,) = torch.autograd.grad(real_pred.sum(), real_input, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# --------------------------------------------------------------------------------------------
# Chamfer


def canonical_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The canonical coordinate frame: (2, H, W), channel 0 = x across columns, 1 = y down rows,
    pixel centres spanning [-1, 1] inclusive (``linspace``)."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])


def _nearest_index(src: torch.Tensor, dst: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each point of ``src`` (B, N, D), the index of its nearest point in ``dst`` (B, M, D); no grad.

    Chunked over N so memory stays O(B × chunk × M). Squared distances by the expansion
    ‖a‖² − 2a·b + ‖b‖² (one matrix product); only the argmin is used, the loss itself is
    recomputed exactly from the chosen pairs.
    """
    out = []
    with torch.no_grad():
        dst_sq = dst.pow(2).sum(-1).unsqueeze(1)  # (B, 1, M)
        for start in range(0, src.shape[1], chunk):
            part = src[:, start:start + chunk]
            d = dst_sq - 2 * part @ dst.transpose(1, 2)  # ‖a‖² is constant per row: argmin unchanged
            out.append(d.argmin(dim=2))
    return torch.cat(out, dim=1)


def chamfer_loss(warped: torch.Tensor, canonical: torch.Tensor, *, chunk: int = 2048) -> torch.Tensor:
    """Symmetric chamfer distance between each sample's warped coordinates and the canonical grid.

    ``warped``: (B, 2, H, W) correspondence maps; ``canonical``: (2, H', W') or (N, 2) points.
    Per sample: mean over warped points of the squared distance to the nearest canonical point,
    plus mean over canonical points of the squared distance to the nearest warped point; the
    result is the mean over the batch (scalar).

    Nearest neighbours are found without gradient, in chunks (never an HW × HW matrix unless
    ``chunk`` ≥ HW); the loss is then the squared distance of the gathered pairs, whose gradient
    equals that of the min (the argmin is piecewise constant).
    """
    b = warped.shape[0]
    points = warped.flatten(2).transpose(1, 2)  # (B, HW, 2)
    grid = canonical.flatten(1).t() if canonical.dim() == 3 else canonical
    grid = grid.to(points).unsqueeze(0).expand(b, -1, -1)  # (B, N, 2)
    detached = points.detach()
    to_grid = torch.gather(grid, 1, _nearest_index(detached, grid, chunk).unsqueeze(-1).expand(-1, -1, 2))
    to_points = torch.gather(points, 1, _nearest_index(grid, detached, chunk).unsqueeze(-1).expand(-1, -1, 2))
    forward = (points - to_grid).pow(2).sum(-1).mean(1)
    backward = (grid - to_points).pow(2).sum(-1).mean(1)
    return (forward + backward).mean()


def chamfer_loss_dense(warped: torch.Tensor, canonical: torch.Tensor) -> torch.Tensor:
    """Straightforward reference of :func:`chamfer_loss` with the full distance matrix."""
    points = warped.flatten(2).transpose(1, 2)
    grid = canonical.flatten(1).t() if canonical.dim() == 3 else canonical
    d = torch.cdist(points, grid.to(points).expand(points.shape[0], -1, -1)).pow(2)
    return (d.min(dim=2).values.mean(1) + d.min(dim=1).values.mean(1)).mean()


# --------------------------------------------------------------------------------------------
# Warp loss


def _flatten_pair(coords_a: torch.Tensor, coords_b: torch.Tensor, image_b: torch.Tensor):
    if coords_a.shape[1] != 2 or coords_b.shape[1] != 2:
        raise ValueError(f"correspondence maps must be (B, 2, H, W), got {tuple(coords_a.shape)} / {tuple(coords_b.shape)}")
    if image_b.shape[-2:] != coords_b.shape[-2:] or image_b.shape[0] != coords_b.shape[0]:
        raise ValueError(f"image_b {tuple(image_b.shape)} must match coords_b {tuple(coords_b.shape)} in batch and size")
    a = coords_a.flatten(2).transpose(1, 2)  # (B, HWa, 2)
    bb = coords_b.flatten(2).transpose(1, 2)  # (B, HWb, 2)
    v = image_b.flatten(2).transpose(1, 2)  # (B, HWb, C)
    return a, bb, v


def _unflatten(rebuilt: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, _, h, w = like.shape
    return rebuilt.transpose(1, 2).reshape(b, -1, h, w)


def _euclidean_chunk(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    d2 = (a.unsqueeze(2) - b.unsqueeze(1)).pow(2).sum(-1)
    # sqrt with a tiny floor: the exact distance's gradient is undefined at zero.
    d = (d2 + 1e-12).sqrt()
    return torch.softmax(-d / tau, dim=-1) @ v


def warp_temperature(reach_px: float, size: int, distance: Distance = "squared") -> float:
    """The softmax temperature whose kernel reaches ``reach_px`` pixels on a ``size``-pixel map.

    Map pixels are 2 / (size − 1) canonical units apart (the grid spans [-1, 1] inclusive). The
    reach r (canonical units) is where a match's weight has fallen by e relative to an exact one:
    τ = r for the Euclidean kernel exp(−d/τ), τ = r² for the squared kernel exp(−d²/τ).
    ``reach_px`` = 0.635 on a 128 px map is the paper's τ = 0.01 with the Euclidean distance.
    """
    if reach_px <= 0 or size < 2:
        raise ValueError(f"warp kernel reach must be > 0 px on a map of at least 2 px, got {reach_px} px at {size} px")
    reach = reach_px * 2.0 / (size - 1)
    if distance == "squared":
        return reach * reach
    if distance == "euclidean":
        return reach
    raise ValueError(f"unknown warp distance {distance!r}: expected 'squared' or 'euclidean'")


def soft_warp(
    coords_a: torch.Tensor,
    coords_b: torch.Tensor,
    image_b: torch.Tensor,
    tau: float,
    *,
    distance: Distance = "squared",
    chunk: int = 1024,
) -> torch.Tensor:
    """Rebuild image A from image B's colours by soft matching of canonical coordinates.

    Each pixel p of A becomes Σ_q softmax_q(−dist(c_A(p), c_B(q)) / τ) · image_B(q), with
    ``dist`` the squared (default) or plain Euclidean distance (see the module docstring).

    ``coords_a``: (B, 2, Ha, Wa); ``coords_b``: (B, 2, Hb, Wb); ``image_b``: (B, C, Hb, Wb).
    Returns (B, C, Ha, Wa). Memory O((Ha·Wa + Hb·Wb)) for ``squared`` (fused attention) and
    O(chunk · Hb·Wb) for ``euclidean``; differentiable in all three inputs.
    """
    a, b, v = _flatten_pair(coords_a, coords_b, image_b)
    if distance == "squared":
        ones = torch.ones_like(a[..., :1])
        q = torch.cat([a, ones], dim=-1)
        k = torch.cat([2.0 * b, -b.pow(2).sum(-1, keepdim=True)], dim=-1)
        # Fused kernels need a unit stride along the feature axis, and the GPU ones a feature
        # width that is a multiple of 8; otherwise PyTorch silently falls back to the math
        # path, which builds the full matrix. Zero padding changes neither q·k nor the output.
        channels = v.shape[-1]
        q, k, v = (F.pad(t, (0, (-t.shape[-1]) % 8)).unsqueeze(1).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / tau)
        return _unflatten(out.squeeze(1)[..., :channels], coords_a)
    if distance == "euclidean":
        pieces = []
        for start in range(0, a.shape[1], chunk):
            part = a[:, start:start + chunk]
            if torch.is_grad_enabled() and (part.requires_grad or b.requires_grad or v.requires_grad):
                pieces.append(checkpoint(_euclidean_chunk, part, b, v, tau, use_reentrant=False))
            else:
                pieces.append(_euclidean_chunk(part, b, v, tau))
        return _unflatten(torch.cat(pieces, dim=1), coords_a)
    raise ValueError(f"unknown warp distance {distance!r}: expected 'squared' or 'euclidean'")


def soft_warp_dense(
    coords_a: torch.Tensor, coords_b: torch.Tensor, image_b: torch.Tensor, tau: float, *, distance: Distance = "squared"
) -> torch.Tensor:
    """Straightforward reference of :func:`soft_warp`: the full (HWa × HWb) softmax matrix."""
    a, b, v = _flatten_pair(coords_a, coords_b, image_b)
    d2 = (a.unsqueeze(2) - b.unsqueeze(1)).pow(2).sum(-1)
    if distance == "squared":
        logits = -d2 / tau
    elif distance == "euclidean":
        logits = -(d2 + 1e-12).sqrt() / tau
    else:
        raise ValueError(f"unknown warp distance {distance!r}")
    return _unflatten(torch.softmax(logits, dim=-1) @ v, coords_a)


def warp_loss(
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    coords_a: torch.Tensor,
    coords_b: torch.Tensor,
    perceptual: PerceptualFn,
    tau: float,
    *,
    distance: Distance = "squared",
    symmetric: bool = True,
    dense: bool = False,
    detach_target: bool = True,
) -> torch.Tensor:
    """Warp loss: perceptual distance between A and A rebuilt from B's colours (and B from A's).

    ``perceptual(x, y)`` gives a per-sample distance (B,). Images (B, 3, H, W) and correspondence
    maps (B, 2, H, W) must have the same size. Returns the batch mean (scalar), the two
    directions summed when ``symmetric``. ``dense=True`` uses the HW × HW reference (benchmarks).

    ``detach_target`` (default, as in the reference code): the image being rebuilt is the fixed
    target of its own term — gradients reach the maps and the image whose colours are borrowed,
    not the target, so the generator cannot lower the loss by blurring the target towards the
    soft rebuild.
    """
    warp = soft_warp_dense if dense else soft_warp
    target_a = image_a.detach() if detach_target else image_a
    target_b = image_b.detach() if detach_target else image_b
    rebuilt_a = warp(coords_a, coords_b, image_b, tau, distance=distance)
    loss = perceptual(rebuilt_a, target_a).mean()
    if symmetric:
        rebuilt_b = warp(coords_b, coords_a, image_a, tau, distance=distance)
        loss = loss + perceptual(rebuilt_b, target_b).mean()
    return loss


# --------------------------------------------------------------------------------------------
# Swap constraints, backward MLP


def gradient_magnitude(images: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Per-pixel gradient magnitude of (B, C, H, W) images: √(Σ_c (∂x)² + (∂y)² + eps), (B, 1, H, W).

    Forward differences, the last column / row padded with zero difference. ``eps`` keeps the
    gradient of the square root finite in flat regions.
    """
    dx = F.pad(images[..., :, 1:] - images[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(images[..., 1:, :] - images[..., :-1, :], (0, 0, 0, 1))
    return (dx.square() + dy.square()).sum(1, keepdim=True).add(eps).sqrt()


def _one_minus_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return 1.0 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def layout_change(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How much the layout differs between two images: 1 − Pearson correlation of their
    gradient-magnitude maps, per sample (B,), in [0, 2]; 0 for identical images.

    Correlation normalises each map (mean and scale), so a recolouring that keeps the edges where
    they are costs little, while moving the edges by a few pixels decorrelates the maps. This is
    the training-health measure of DESIGN §3 and the building block of :func:`layout_distance`.
    """
    return _one_minus_correlation(gradient_magnitude(x), gradient_magnitude(y))


def layout_distance(x: torch.Tensor, y: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """The texture-swap distance: :func:`layout_change` averaged over ``scales`` resolutions
    (full, 1/2, 1/4 by 2×2 average pooling), per sample (B,).

    Why not LPIPS: a (shift-tolerant) perceptual network sees colour, not layout — measured on
    64 px synthetic faces, a per-part recolouring costs 0.38 under stlpips-alex and a 4-px shift
    0.15, so minimising it teaches the texture code to keep colours, and leaves it free to move
    the layout. This distance measures the opposite way round (recolouring 0.12, 4-px shift 0.88,
    a different face 0.86). The coarser scales give a smooth basin for larger misalignments, where
    the full-resolution term has saturated.
    """
    total, used = layout_change(x, y), 1
    while used < scales and min(x.shape[-2:]) >= 16:
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total, used = total + layout_change(x, y), used + 1
    return total / used


def texture_swap_loss(image: torch.Tensor, image_swapped_texture: torch.Tensor, distance: PerceptualFn) -> torch.Tensor:
    """Texture-swap constraint: distance between G(s, t) and G(s, t′) — same structure, different
    texture must keep the layout. ``distance(x, y)`` → (B,): :func:`layout_distance` (recipes'
    ``losses.texture_distance = "layout"``) or a perceptual network. Images (B, 3, H, W); returns
    the batch mean."""
    return distance(image, image_swapped_texture).mean()


def structure_swap_d_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Patch-discriminator loss of the structure-swap constraint (logistic).

    ``real_pred``: scores of crops of G(s, t) against reference crops of G(s, t);
    ``fake_pred``: scores of crops of G(s′, t) against the same references."""
    return d_logistic_loss(real_pred, fake_pred)


def structure_swap_g_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """Generator side of the structure-swap constraint: crops of G(s′, t) should pass as G(s, t)."""
    return g_nonsaturating_loss(fake_pred)


def backward_mlp_loss(predicted_canonical: torch.Tensor, canonical: torch.Tensor) -> torch.Tensor:
    """CoordGAN-B: L1 between the backward MLP's output on warped coordinates (B, 2, H, W) and
    the canonical coordinates they came from ((2, H, W) broadcast or (B, 2, H, W)). Scalar."""
    return (predicted_canonical - canonical.to(predicted_canonical)).abs().mean()


# --------------------------------------------------------------------------------------------
# Crops for the patch discriminator


def random_crops(
    images: torch.Tensor,
    n: int,
    min_frac: float,
    max_frac: float,
    out_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` random square crops per image, each side a uniform fraction in [min_frac, max_frac]
    of the image side, resampled (bilinear) to ``out_size``.

    ``images``: (B, C, H, W). Returns (B, n, C, out_size, out_size). Crop boxes are drawn from
    ``generator`` on the CPU (the same generator state gives the same crops on any device); the
    resampling is differentiable (``grid_sample``), so gradients reach the images.
    """
    b, c, h, w = images.shape
    side = torch.empty(b * n).uniform_(min_frac, max_frac, generator=generator)  # fraction of the image
    # Centre so that the crop stays inside the image; in normalised [-1, 1] units.
    cx = (torch.rand(b * n, generator=generator) * 2 - 1) * (1 - side)
    cy = (torch.rand(b * n, generator=generator) * 2 - 1) * (1 - side)
    theta = torch.zeros(b * n, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [b * n, c, out_size, out_size], align_corners=False)
    src = images.unsqueeze(1).expand(b, n, c, h, w).reshape(b * n, c, h, w)
    crops = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return crops.reshape(b, n, c, out_size, out_size)
