"""One optimisation step of the generator stage (DESIGN §3): one discriminator update, then one
generator update.

The global batch of ``optim.batch`` images is split into ``world_size × accumulate`` equal
micro-batches ("chunks"); this process handles the chunks of its rank. Every random draw of a
chunk (codes, noise, crops) comes from a generator seeded by (run seed, step, global chunk
index, purpose), so the result of a step does not depend on how chunks are spread over
processes, and a resumed run draws exactly what an uninterrupted one would.

Within a chunk, images are paired (A, B) = (i, i ^ 1): a pair exchanges codes. With s, t the
structure and texture codes and s′, t′ the partner's:
  image         G(s, t)     adversarial loss, chamfer on its correspondence map
  texture swap  G(s, t′)    texture-swap constraint: perceptual distance to G(s, t)
  structure swap G(s′, t)   warp loss (same texture, different structure: each rebuilt from the
                            other's colours through the correspondence maps) and the
                            structure-swap constraint (patch discriminator).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coordgan_cli import losses
from coordgan_cli.config import Recipe
from coordgan_cli.training.distributed import Distributed

# Purposes of the per-chunk random generators.
_D_STEP, _G_STEP, _D_CROPS, _G_CROPS, _SAMPLES = 1, 2, 3, 4, 5


def chunk_generator(seed: int, step: int, chunk: int, purpose: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by (seed, step, chunk, purpose) — stateless randomness."""
    state = np.random.SeedSequence([seed, step, chunk, purpose]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def pair_partner(n: int, device: torch.device) -> torch.Tensor:
    """Index of each image's partner in its pair: [1, 0, 3, 2, ...] (n even)."""
    return torch.arange(n, device=device) ^ 1


@dataclass
class TrainState:
    """Everything a step changes: networks, EMA generator, optimisers, step count."""

    generator: nn.Module
    discriminator: nn.Module
    patch_discriminator: nn.Module
    generator_ema: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    step: int = 0
    frozen: list[str] = field(default_factory=list)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator,
                "patch_discriminator": self.patch_discriminator}


def freeze(state_modules: dict[str, nn.Module], prefixes: list[str]) -> None:
    """Turn off gradients of every parameter whose qualified name ('generator.warp.…') starts
    with one of ``prefixes``."""
    for name, module in state_modules.items():
        for pname, p in module.named_parameters():
            if any(f"{name}.{pname}".startswith(prefix) for prefix in prefixes):
                p.requires_grad_(False)


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def build_train_state(recipe: Recipe, networks: dict[str, nn.Module], frozen: list[str]) -> TrainState:
    """Optimisers (Adam; lazy-R1 correction on the discriminators) and the EMA copy."""
    o = recipe.optim
    modules = {k: networks[k] for k in ("generator", "discriminator", "patch_discriminator")}
    freeze(modules, frozen)
    c = recipe.losses.r1_every / (recipe.losses.r1_every + 1)

    def adam(module: nn.Module, ratio: float) -> torch.optim.Optimizer:
        params = trainable(module)
        if not params:
            raise ValueError("a network has no trainable parameters")
        return torch.optim.Adam(params, lr=o.lr * ratio, betas=(o.betas[0] ** ratio, o.betas[1] ** ratio))

    optimizers = {
        "generator": adam(modules["generator"], 1.0),
        "discriminator": adam(modules["discriminator"], c),
        "patch_discriminator": adam(modules["patch_discriminator"], c),
    }
    ema = copy.deepcopy(modules["generator"]).eval().requires_grad_(False)
    return TrainState(modules["generator"], modules["discriminator"], modules["patch_discriminator"], ema,
                      optimizers, 0, list(frozen))


@dataclass
class StepContext:
    recipe: Recipe
    seed: int
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    dist: Distributed
    load_images: Callable[[range], torch.Tensor]  # stream positions → (N, 3, S, S) in [-1, 1]

    @property
    def chunks_per_rank(self) -> int:
        return self.recipe.optim.accumulate

    @property
    def chunk_size(self) -> int:
        return self.recipe.optim.batch // (self.dist.world_size * self.recipe.optim.accumulate)

    def chunks(self) -> range:
        """Global indices of this process's chunks of a step."""
        return range(self.dist.rank * self.chunks_per_rank, (self.dist.rank + 1) * self.chunks_per_rank)

    def real_images(self, step: int, chunk: int) -> torch.Tensor:
        """The real images of ``chunk`` of ``step``: (chunk_size, 3, S, S) in [-1, 1] on the device."""
        start = step * self.recipe.optim.batch + chunk * self.chunk_size
        return self.load_images(range(start, start + self.chunk_size)).to(self.dist.device)


def check_batch_split(recipe: Recipe, world_size: int) -> None:
    from coordgan_cli.errors import UserError

    parts = world_size * recipe.optim.accumulate
    if recipe.optim.batch % parts or (recipe.optim.batch // parts) % 2:
        raise UserError(
            f"optim.batch = {recipe.optim.batch} must split into {world_size} process(es) × "
            f"{recipe.optim.accumulate} micro-batch(es) of an even number of images (images are paired)"
        )


def warmup_ramp(step: int, warmup_steps: int) -> float:
    """Linear ramp 0 → 1 over the first ``warmup_steps`` steps (1 when there is no warm-up)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def gan_weight(recipe: Recipe, step: int) -> float:
    """λ_GAN at ``step``: ``gan_start`` ramped linearly to ``gan`` over the warm-up (reference: 1 → 2)."""
    lo = recipe.losses
    return lo.gan_start + (lo.gan - lo.gan_start) * warmup_ramp(step, lo.warmup_steps)


def warp_weight(recipe: Recipe, step: int) -> float:
    """λ_warp at ``step``: 0 before ``losses.warp_start``, then ramped linearly to ``losses.warp`` over
    the warm-up (counted from ``warp_start``)."""
    lo = recipe.losses
    if step < lo.warp_start:
        return 0.0
    return lo.warp * warmup_ramp(step - lo.warp_start, lo.warmup_steps)


def structure_swap_active(recipe: Recipe, step: int) -> bool:
    """Whether the patch discriminator and the structure-swap loss act at ``step``."""
    return recipe.losses.structure_swap > 0 and step >= recipe.losses.structure_swap_start


def warp_tau(recipe: Recipe, map_size: int) -> float:
    """The warp loss's temperature: ``losses.warp_tau``, or derived from ``losses.warp_reach`` (map pixels)."""
    lo = recipe.losses
    return lo.warp_tau if lo.warp_tau > 0 else losses.warp_temperature(lo.warp_reach, map_size, lo.warp_distance)


def warp_distance_fn(recipe: Recipe, perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """The per-sample distance of the warp loss: the perceptual network, plus ``warp_l1`` × L1."""
    weight = recipe.losses.warp_l1
    if weight <= 0:
        return perceptual
    return lambda x, y: perceptual(x, y) + weight * (x - y).abs().flatten(1).mean(1)


def texture_distance_fn(recipe: Recipe, perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """The per-sample distance of the texture-swap constraint (``losses.texture_distance``)."""
    return losses.layout_distance if recipe.losses.texture_distance == "layout" else perceptual


def ema_beta(recipe: Recipe) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` thousand images."""
    if recipe.optim.ema_kimg <= 0:
        return 0.0
    return 0.5 ** (recipe.optim.batch / (recipe.optim.ema_kimg * 1000.0))


def _codes(n: int, dim: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(2, n, dim, generator=gen, device=device)
    return z[0], z[1]


def _patch_inputs(images: torch.Tensor, ctx: StepContext, gen: torch.Generator) -> torch.Tensor:
    """Crops for the patch discriminator: (B, n, 3, p, p)."""
    lo = ctx.recipe.losses
    return losses.random_crops(images, lo.patch_crops, lo.patch_min, lo.patch_max,
                               ctx.recipe.model.patch_size, gen)


def _patch_scores(pd: nn.Module, references: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Each crop (B, n, ...) scored against the mean feature of its image's references."""
    ref = pd.extract_features(references).mean(dim=1)  # (B, C, 2, 2)
    feats = pd.extract_features(crops)
    n = feats.shape[1]
    ref = ref[:, None].expand(-1, n, *ref.shape[1:])
    return pd.discriminate_features(ref.flatten(0, 1), feats.flatten(0, 1))


def _generate(g: nn.Module, z_s: torch.Tensor, z_t: torch.Tensor, gen: torch.Generator):
    """Image, texture-swapped and structure-swapped images, and both correspondence maps."""
    partner = pair_partner(z_s.shape[0], z_s.device)
    w_s = g.map_structure(z_s)
    w_plus = g.texture_plus(g.map_texture(z_t))
    corr = g.correspondence(w_s)
    # The three syntheses share one batched call: fewer, larger kernels. Each image draws its own
    # noise. (Sharing an image's noise with its swaps was tried: the generator then met the
    # layout texture-swap distance by amplifying the shared noise into a speckle common to both
    # images — measured in a 500-step synthetic-64 run, every image became the same speckle.)
    corr3 = torch.cat([corr, corr, corr[partner]])
    w3 = torch.cat([w_plus, w_plus[partner], w_plus])
    images = g.synthesize(corr3, w3, generator=gen)
    image, tex_swap, struct_swap = images.chunk(3)
    return image, tex_swap, struct_swap, corr, w_s


def _image_size_for(corr: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Images at the correspondence map's size (high-resolution stage: area downsampling)."""
    if images.shape[-2:] == corr.shape[-2:]:
        return images
    return F.interpolate(images, size=corr.shape[-2:], mode="area")


def discriminator_step(state: TrainState, ctx: StepContext, step: int) -> dict[str, float]:
    """One update of both discriminators (logistic loss; lazy R1 every ``r1_every`` steps)."""
    lo = ctx.recipe.losses
    g, d, pd = state.generator, state.discriminator, state.patch_discriminator
    d.requires_grad_(True)
    pd.requires_grad_(True)
    freeze({"discriminator": d, "patch_discriminator": pd}, state.frozen)
    for opt in (state.optimizers["discriminator"], state.optimizers["patch_discriminator"]):
        opt.zero_grad(set_to_none=True)
    regularise = step % lo.r1_every == 0
    patch_active = structure_swap_active(ctx.recipe, step)
    scale = 1.0 / ctx.chunks_per_rank
    logs: dict[str, float] = {}
    for chunk in ctx.chunks():
        n = ctx.chunk_size
        real = ctx.real_images(step, chunk)
        gen = chunk_generator(ctx.seed, step, chunk, _D_STEP, ctx.dist.device)
        crop_gen = chunk_generator(ctx.seed, step, chunk, _D_CROPS, torch.device("cpu"))
        with torch.no_grad():
            z_s, z_t = _codes(n, g.latent_dim, gen, ctx.dist.device)
            fake, _, struct_swap, _, _ = _generate(g, z_s, z_t, gen)

        real_in = real.detach().requires_grad_(regularise)
        real_pred = d(real_in)
        d_loss = losses.d_logistic_loss(real_pred, d(fake))
        total = d_loss
        logs["d"] = logs.get("d", 0.0) + d_loss.item() * scale
        if regularise:
            # Lazy R1 (γ/2 · penalty), scaled by the interval so its average strength is unchanged.
            r1 = losses.d_r1_loss(real_pred, real_in)
            total = total + lo.r1_every * lo.r1_image / 2 * r1
            logs["r1"] = logs.get("r1", 0.0) + r1.item() * scale

        if patch_active:
            refs = _patch_inputs(fake, ctx, crop_gen)
            real_crops = _patch_inputs(fake, ctx, crop_gen).requires_grad_(regularise)
            fake_crops = _patch_inputs(struct_swap, ctx, crop_gen)
            patch_real = _patch_scores(pd, refs, real_crops)
            patch_loss = losses.structure_swap_d_loss(patch_real, _patch_scores(pd, refs, fake_crops))
            total = total + patch_loss
            logs["d_patch"] = logs.get("d_patch", 0.0) + patch_loss.item() * scale
            if regularise:
                r1_patch = losses.d_r1_loss(patch_real, real_crops)
                total = total + lo.r1_every * lo.r1_patch / 2 * r1_patch
                logs["r1_patch"] = logs.get("r1_patch", 0.0) + r1_patch.item() * scale
        (total * scale).backward()
    ctx.dist.average_gradients(trainable(d))
    state.optimizers["discriminator"].step()
    if patch_active:
        ctx.dist.average_gradients(trainable(pd))
        state.optimizers["patch_discriminator"].step()
    return logs


def generator_step(state: TrainState, ctx: StepContext, step: int) -> dict[str, float]:
    """One update of the generator with the full objective; then the EMA update."""
    lo = ctx.recipe.losses
    g, d, pd = state.generator, state.discriminator, state.patch_discriminator
    d.requires_grad_(False)
    pd.requires_grad_(False)
    state.optimizers["generator"].zero_grad(set_to_none=True)
    ramp = warmup_ramp(step, lo.warmup_steps)
    scale = 1.0 / ctx.chunks_per_rank
    logs: dict[str, float] = {"ramp": ramp}
    grid = None
    warp_distance = warp_distance_fn(ctx.recipe, ctx.perceptual)
    texture_distance = texture_distance_fn(ctx.recipe, ctx.perceptual)
    for chunk in ctx.chunks():
        n = ctx.chunk_size
        gen = chunk_generator(ctx.seed, step, chunk, _G_STEP, ctx.dist.device)
        crop_gen = chunk_generator(ctx.seed, step, chunk, _G_CROPS, torch.device("cpu"))
        z_s, z_t = _codes(n, g.latent_dim, gen, ctx.dist.device)
        image, tex_swap, struct_swap, corr, w_s = _generate(g, z_s, z_t, gen)
        partner = pair_partner(n, corr.device)
        if grid is None:
            grid = losses.canonical_grid(*corr.shape[-2:], device=corr.device, dtype=corr.dtype)

        parts = {
            "g_adv": losses.g_nonsaturating_loss(d(image)),
            "chamfer": losses.chamfer_loss(corr, grid),
        }
        weights = {"g_adv": gan_weight(ctx.recipe, step), "chamfer": lo.chamfer}
        if lo.warp > 0 and step >= lo.warp_start:
            # Each image rebuilt from its structure-swapped twin (same texture) and vice versa; the
            # image being rebuilt is a fixed target (detached, as in the reference code).
            parts["warp"] = losses.warp_loss(
                _image_size_for(corr, image), _image_size_for(corr, struct_swap), corr, corr[partner],
                warp_distance, warp_tau(ctx.recipe, corr.shape[-1]), distance=lo.warp_distance,
            )
            weights["warp"] = warp_weight(ctx.recipe, step)
        if lo.texture_swap > 0:
            parts["texture_swap"] = losses.texture_swap_loss(image, tex_swap, texture_distance)
            weights["texture_swap"] = lo.texture_swap * (ramp if lo.texture_swap_ramp else 1.0)
        if structure_swap_active(ctx.recipe, step):
            # The reference crops only condition the patch discriminator: detached (reference code).
            refs = _patch_inputs(image.detach(), ctx, crop_gen)
            fake_crops = _patch_inputs(struct_swap, ctx, crop_gen)
            parts["structure_swap"] = losses.structure_swap_g_loss(_patch_scores(pd, refs, fake_crops))
            weights["structure_swap"] = lo.structure_swap * ramp
        if g.backward_mlp is not None:
            parts["backward"] = losses.backward_mlp_loss(g.canonical_estimate(corr, w_s), grid)
            weights["backward"] = lo.backward
        total = sum(weights[k] * v for k, v in parts.items())
        (total * scale).backward()
        for k, v in parts.items():
            logs[k] = logs.get(k, 0.0) + v.item() * scale
        logs["g_total"] = logs.get("g_total", 0.0) + total.item() * scale
    ctx.dist.average_gradients(trainable(g))
    state.optimizers["generator"].step()
    update_ema(state.generator_ema, g, ema_beta(ctx.recipe))
    return logs


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema ← β·ema + (1 − β)·model for parameters; buffers copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def train_step(state: TrainState, ctx: StepContext) -> dict[str, float]:
    """Step ``state.step``: D update, G update; returns this process's loss values (means over
    its chunks). The caller averages them over processes and checks they are finite."""
    step = state.step
    logs = discriminator_step(state, ctx, step)
    logs.update(generator_step(state, ctx, step))
    state.step = step + 1
    return logs


def non_finite(logs: dict[str, float]) -> Optional[str]:
    """Name of the first non-finite loss value, or None."""
    for k, v in logs.items():
        if not math.isfinite(v):
            return k
    return None
