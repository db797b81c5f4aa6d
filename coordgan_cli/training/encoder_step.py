"""The encoder stage (DESIGN §3): train the image → (structure w, texture W+) encoder against a
frozen generator (``coordgan train-encoder``), as a stage of the shared training driver.

Objective per step, on a global batch of ``optim.batch`` real images split into chunks exactly as
in the generator stage (``generator_step``: per-rank chunks, randomness seeded by (seed, step,
chunk, purpose), so single- and multi-process runs and resumed runs agree):

- reconstruction (λ_rec = ``encoder.reconstruction``): x̂ = G(corr(E_s(x)), E_t(x)) with the
  generator's constant noise (as at inference); L1(x̂, x) + perceptual(x̂, x).
- latent consistency (λ_con = ``encoder.consistency``): for sampled codes (z_s, z_t) the generated
  image G(s, t) is encoded again; the encoder must recover the structure w (L1) and the
  correspondence map of the generated image (L1 between corr(ŵ_s) and corr(w_s)).
- texture swap (λ_t = ``encoder.texture_swap``): G(corr(E_s(x_A)), E_t(x_B)) must keep A's layout:
  ``losses.texture_distance`` (layout distance by default, or perceptual) to x̂_A (pairs (A, B) =
  (i, i ^ 1) within a chunk).
- equivariance (λ_eq = ``encoder.equivariance``; 0 in the paper's objective): each real image is
  warped by a random affine map T (turn, scale, shift within ``encoder.equivariance_*``); the
  semantic point at p in the warped image is the one at T(p) in the original, so the warped image's
  map must equal the original's map resampled at T(p) (L1 over the pixels whose T(p) lies inside
  the image). Self-supervision on real photos: it teaches the encoder to move the map with the
  face, which the reconstruction of a blurry early generator barely does.
- warped consistency (λ_wc = ``encoder.warped_consistency``; 0 in the paper's objective): a
  generated image warped the same way must get its true map warped the same way — pose regression
  with known answers over a wider range of poses than the generator draws.

The generator is frozen (no gradients to it; gradients flow *through* it to the encoder). The
stage runs on the generator stage's driver (``loop.run_training``: run directory, data stream,
distributed set-up, metrics, checkpoints, NaN stop); only what a step is, what a checkpoint holds
and what a sample grid shows differ (:class:`EncoderStage`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coordgan_cli import losses
from coordgan_cli.config import Recipe
from coordgan_cli.errors import UserError
from coordgan_cli.inference import encoder_checkpoint_payload, generator_state
from coordgan_cli.io.checkpoint import (
    capture_rng_state, checkpoint_recipe, file_sha256, load_checkpoint, load_state_strict, restore_rng_state,
)
from coordgan_cli.models import Encoder, Generator, encoder_kwargs, generator_kwargs
from coordgan_cli.training import distributed
from coordgan_cli.training.data import ImageFolderData
from coordgan_cli.training.generator_step import StepContext, chunk_generator, pair_partner, texture_distance_fn
from coordgan_cli.training.loop import Reporter, resumed_recipe, run_training
from coordgan_cli.training.run_dir import RunDir
from coordgan_cli.training.samples import colour_correspondence

# Purposes of the per-chunk random generators (distinct from the generator stage's).
_E_CODES, _E_INIT, _E_WARP, _E_WARP_FAKE = 21, 22, 23, 24
SAMPLE_IMAGES = 4
# Recipe fields that may change when an encoder run is resumed.
RESUMABLE_CHANGES = {"schedule", "data.path", "data.workers", "output.dir", "encoder.steps"}


# ---------------------------------------------------------------------------------------------
# Pure losses


def reconstruction_loss(reconstruction: torch.Tensor, real: torch.Tensor,
                        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, perceptual) between reconstructions and real images, both (B, 3, H, W) in [-1, 1]; batch means."""
    return (reconstruction - real).abs().mean(), perceptual(reconstruction, real).mean()


def latent_consistency_loss(w_predicted: torch.Tensor, w_true: torch.Tensor, corr_predicted: torch.Tensor,
                            corr_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(code L1, map L1): recovered structure w (B, D) vs the sampled one, and the correspondence map
    (B, 2, H, W) drawn from the recovered w vs the generated image's own map."""
    return (w_predicted - w_true).abs().mean(), (corr_predicted - corr_true).abs().mean()


def random_affine(n: int, turn_degrees: float, scale: float, shift: float, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """(n, 2, 3) affine maps T(p) = A·p + b in normalised coordinates ([-1, 1], as ``affine_grid``):
    a turn uniform in ±``turn_degrees``, a scale uniform in 1 ± ``scale``, a shift uniform in ±``shift``."""
    u = torch.rand(n, 4, generator=generator, device=device) * 2 - 1
    theta = u[:, 0] * math.radians(turn_degrees)
    s = 1 + u[:, 1] * scale
    cos, sin = torch.cos(theta) * s, torch.sin(theta) * s
    return torch.stack([torch.stack([cos, -sin, u[:, 2] * shift], 1), torch.stack([sin, cos, u[:, 3] * shift], 1)], 1)


def warp_by(images: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) resampled at T(p) for every pixel p (bilinear, border padding; pixel centres
    at linspace(-1, 1), as the canonical grid)."""
    grid = F.affine_grid(affine.to(images.dtype), list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def equivariance_loss(corr_warped: torch.Tensor, corr: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the warped image's map (B, 2, H, W) and the original's map ``corr`` resampled
    at T(p) (``affine`` (B, 2, 3)), over the pixels whose T(p) lies inside the image."""
    grid = F.affine_grid(affine.to(corr.dtype), list(corr.shape), align_corners=True)
    target = F.grid_sample(corr, grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = (grid.abs() <= 1).all(-1)[:, None].to(corr.dtype)  # (B, 1, H, W)
    return ((corr_warped - target).abs() * inside).sum() / (inside.sum() * corr.shape[1]).clamp_min(1)


# ---------------------------------------------------------------------------------------------
# State and step


@dataclass
class EncoderTrainState:
    """What a step changes (encoder, its Adam state, the step) plus the frozen generator."""

    encoder: Encoder
    generator: Generator
    optimizer: torch.optim.Optimizer
    step: int = 0


def build_encoder_state(recipe: Recipe, encoder: Encoder, generator: Generator) -> EncoderTrainState:
    generator.eval().requires_grad_(False)
    o = recipe.optim
    opt = torch.optim.Adam(encoder.parameters(), lr=o.lr, betas=(o.betas[0], o.betas[1]))
    return EncoderTrainState(encoder, generator, opt, 0)


def encoder_step(state: EncoderTrainState, ctx: StepContext) -> dict[str, float]:
    """One update of the encoder (step ``state.step``); returns this process's loss values."""
    step = state.step
    cfg = ctx.recipe.encoder
    enc, g = state.encoder, state.generator
    enc.train()
    state.optimizer.zero_grad(set_to_none=True)
    scale = 1.0 / ctx.chunks_per_rank
    logs: dict[str, float] = {}
    for chunk in ctx.chunks():
        n = ctx.chunk_size
        real = ctx.real_images(step, chunk)
        gen = chunk_generator(ctx.seed, step, chunk, _E_CODES, ctx.dist.device)
        partner = pair_partner(n, real.device)

        w_s, w_plus = enc(real)
        corr = g.correspondence(w_s)
        # Reconstruction and texture swap in one batched synthesis.
        both = g.synthesize(torch.cat([corr, corr]), torch.cat([w_plus, w_plus[partner]]), noise="const")
        recon, tex_swap = both.chunk(2)
        rec_l1, rec_perc = reconstruction_loss(recon, real, ctx.perceptual)
        parts = {"rec_l1": rec_l1, "rec_perceptual": rec_perc,
                 "texture_swap": losses.texture_swap_loss(recon, tex_swap, texture_distance_fn(ctx.recipe, ctx.perceptual))}

        with torch.no_grad():
            z = torch.randn(2, n, g.latent_dim, generator=gen, device=ctx.dist.device)
            w_true = g.map_structure(z[0])
            corr_true = g.correspondence(w_true)
            fake = g.synthesize(corr_true, g.texture_plus(g.map_texture(z[1])), generator=gen)
        w_hat = enc.encode_structure(fake)
        parts["con_code"], parts["con_map"] = latent_consistency_loss(w_hat, w_true, g.correspondence(w_hat), corr_true)

        total = (cfg.reconstruction * (rec_l1 + rec_perc) + cfg.consistency * (parts["con_code"] + parts["con_map"])
                 + cfg.texture_swap * parts["texture_swap"])
        # Equivariance on the real images (against their own maps) and warped consistency on the
        # generated ones (against their true maps); each with its own stream of random warps.
        for name, weight, images, maps, purpose in (
                ("equivariance", cfg.equivariance, real, corr, _E_WARP),
                ("warped_consistency", cfg.warped_consistency, fake, corr_true, _E_WARP_FAKE)):
            if weight > 0:
                affine = random_affine(n, cfg.equivariance_turn, cfg.equivariance_scale, cfg.equivariance_shift,
                                       chunk_generator(ctx.seed, step, chunk, purpose, ctx.dist.device), real.device)
                corr_warped = g.correspondence(enc.encode_structure(warp_by(images, affine)))
                parts[name] = equivariance_loss(corr_warped, maps, affine)
                total = total + weight * parts[name]
        (total * scale).backward()
        for k, v in parts.items():
            logs[k] = logs.get(k, 0.0) + v.item() * scale
        logs["e_total"] = logs.get("e_total", 0.0) + total.item() * scale
    ctx.dist.average_gradients([p for p in enc.parameters() if p.requires_grad])
    state.optimizer.step()
    state.step = step + 1
    return logs


@torch.no_grad()
def encoder_sample_grid(encoder: Encoder, generator: Generator, real: torch.Tensor) -> np.ndarray:
    """uint8 grid, one row per image: [input | reconstruction | correspondence map (x red, y green)]."""
    encoder.eval()
    w_s, w_plus = encoder(real)
    size = real.shape[-1]
    recon = generator.synthesize(generator.correspondence(w_s), w_plus, noise="const")
    if recon.shape[-1] != size:
        recon = F.interpolate(recon, size=real.shape[-2:], mode="area")
    cmap = colour_correspondence(generator.correspondence(w_s, (real.shape[-2], real.shape[-1])))
    tiles = torch.stack([(real.clamp(-1, 1) + 1) / 2, (recon.clamp(-1, 1) + 1) / 2, cmap], dim=1)  # (n, 3, 3, H, W)
    n, c, _, h, w = tiles.shape
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(n * h, c * w, 3)
    return (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class EncoderTrainOptions:
    generator_checkpoint: Path
    recipe: Recipe
    run: Path
    device: torch.device
    seed: int = 0
    max_steps: Optional[int] = None


def resolve_recipe(recipe: Recipe, generator_data: dict, generator_path: Path) -> tuple[Recipe, list[str]]:
    """The encoder run's recipe: the generator architecture from the generator checkpoint (the
    truth about the trained model), the encoder sizes (``model.encoder_*``) and everything else
    from ``recipe``. Returns the recipe and the generator keys on which ``recipe`` disagreed
    (not used)."""
    stored = checkpoint_recipe(generator_data, generator_path)
    mine, theirs = dataclasses.asdict(recipe.model), dataclasses.asdict(stored.model)
    ignored = [f"model.{k}" for k in mine if not k.startswith("encoder_") and mine[k] != theirs[k]]
    model = dataclasses.replace(stored.model, **{k: v for k, v in mine.items() if k.startswith("encoder_")})
    return recipe.replace(model=model), ignored


def prepare(options: EncoderTrainOptions, device: torch.device, reporter: Reporter) -> "EncoderStage":
    """Build or resume the encoder run."""
    gpath = Path(options.generator_checkpoint)
    gdata = load_checkpoint(gpath)
    if gdata["kind"] != "generator":
        raise UserError(f"{gpath}: a {gdata['kind']} checkpoint; train-encoder needs a generator checkpoint "
                        "written by `coordgan train` / `coordgan finetune` (e.g. RUN/latest.pt)")
    gsha = file_sha256(gpath)
    recipe, ignored = resolve_recipe(options.recipe, gdata, gpath)
    if ignored:
        reporter.message(f"generator architecture taken from {gpath}; the recipe's "
                         f"{', '.join(ignored[:4])}{' …' if len(ignored) > 4 else ''} not used")
    gstate = generator_state(gdata, gpath)
    generator = Generator(**generator_kwargs(recipe.model))
    load_state_strict(generator, gstate, "generator", gpath)
    # The encoder's initial weights come from the run seed alone (built on the CPU, then moved).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(chunk_generator(options.seed, 0, 0, _E_INIT, torch.device("cpu")).initial_seed())
        try:
            encoder = Encoder(**encoder_kwargs(recipe.model))
        except ValueError as exc:
            raise UserError(f"{options.recipe.name}: model.encoder_channels / encoder_texture_channels do not fit the "
                            f"{recipe.model.coord_size} px canonical grid of {gpath}: {exc}") from None
    generator, encoder = generator.to(device), encoder.to(device)
    run = RunDir(options.run)
    newest = run.newest_checkpoint()
    facts: dict[str, Any] = {"seed": options.seed, "stage": "train-encoder", "generator_checkpoint": str(gpath),
                             "generator_step": int(gdata["step"])}
    if newest is None:
        run.check_new_run()
        state = build_encoder_state(recipe, encoder, generator)
        return EncoderStage(recipe, state, facts, run, None, options.generator_checkpoint, gstate, gsha)
    data = run.load_newest()
    if data["kind"] != "encoder":
        raise UserError(f"{run.path}: holds a {data['kind']} run, not an encoder run; choose another --out")
    recorded = (data.get("extra") or {}).get("generator_sha256")
    if recorded != gsha:
        raise UserError(f"{newest}: this encoder run was trained against the generator checkpoint with sha256 "
                        f"{str(recorded)[:12]}…, but {gpath} has sha256 {gsha[:12]}…; resume with the same generator "
                        "file, or start a new run (another --out)")
    recipe = resumed_recipe(checkpoint_recipe(data, newest), recipe, run, newest, RESUMABLE_CHANGES)
    load_state_strict(encoder, data["networks"]["encoder"], "encoder", newest)
    state = build_encoder_state(recipe, encoder, generator)
    state.optimizer.load_state_dict(data["optimizers"]["encoder"])
    state.step = int(data["step"])
    if "rng" in data:
        restore_rng_state(data["rng"])
    extra = dict(data.get("extra") or {})
    facts.update(seed=extra.get("seed", options.seed), skipped_files=extra.get("skipped_files", []))
    return EncoderStage(recipe, state, facts, run, newest, options.generator_checkpoint, gstate, gsha)


@dataclass
class EncoderStage:
    """The encoder stage as ``loop.run_training`` drives it (see ``loop.Stage``)."""

    recipe: Recipe
    state: EncoderTrainState
    facts: dict[str, Any]
    run: RunDir
    resumed_from: Optional[Path]
    generator_checkpoint: Path
    generator_state: dict[str, torch.Tensor]  # the frozen generator's weights, embedded in every checkpoint
    generator_sha256: str
    diverged_hint: str = "lower optim.lr and rerun"

    @property
    def steps(self) -> int:
        return self.recipe.encoder.steps

    def config_facts(self) -> dict[str, Any]:
        return {**self.facts, "generator_sha256": self.generator_sha256}

    def start_message(self, where: str, data: ImageFolderData, dist: distributed.Distributed) -> str:
        return (f"{self.run.path}: encoder {where}; {len(data)} training images in {data.root}; generator "
                f"{self.generator_checkpoint} (frozen); {dist.world_size} process(es) on {dist.device}")

    def train_step(self, ctx: StepContext) -> dict[str, float]:
        return encoder_step(self.state, ctx)

    def payload(self) -> dict[str, Any]:
        return encoder_checkpoint_payload(
            self.recipe, self.state.encoder.state_dict(), self.generator_state, self.generator_sha256, self.state.step,
            generator_step=self.facts["generator_step"], optimizers={"encoder": self.state.optimizer.state_dict()},
            rng=capture_rng_state(), extra=self.facts)

    def sampler(self, data: ImageFolderData, device: torch.device) -> Callable[[], np.ndarray]:
        """Grids for fixed images (the first stream positions, not flipped): they differ only by training."""
        recipe = self.recipe
        real = ImageFolderData(recipe.data.path, recipe.model.size, seed=int(self.facts["seed"]), hflip=False).batch(
            range(min(SAMPLE_IMAGES, len(data)))).to(device)
        return lambda: encoder_sample_grid(self.state.encoder, self.state.generator, real)


def train_encoder(options: EncoderTrainOptions, reporter: Reporter) -> dict[str, Any]:
    """Run (or resume) encoder training to ``min(encoder.steps, max_steps)``; returns a summary dict."""
    return run_training(options.recipe, options.run, options.device, options.max_steps, reporter,
                        lambda dist: prepare(options, dist.device, reporter))


def frozen_generator_unchanged(generator: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """True when ``generator``'s weights still equal ``state`` (the generator must stay frozen)."""
    own = generator.state_dict()
    return all(torch.equal(own[k].cpu(), v.cpu()) for k, v in state.items())
