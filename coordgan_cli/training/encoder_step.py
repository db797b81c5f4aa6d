"""The encoder stage (DESIGN §3): train the image → (structure w, texture W+) encoder against a
frozen generator, and its small loop (``coordgan train-encoder``).

Objective per step, on a global batch of ``optim.batch`` real images split into chunks exactly as
in the generator stage (``generator_step``: per-rank chunks, randomness seeded by (seed, step,
chunk, purpose), so single- and multi-process runs and resumed runs agree):

- reconstruction (λ_rec = ``encoder.reconstruction``): x̂ = G(corr(E_s(x)), E_t(x)) with the
  generator's constant noise (as at inference); L1(x̂, x) + perceptual(x̂, x).
- latent consistency (λ_con = ``encoder.consistency``): for sampled codes (z_s, z_t) the generated
  image G(s, t) is encoded again; the encoder must recover the structure w (L1) and the
  correspondence map of the generated image (L1 between corr(ŵ_s) and corr(w_s)).
- texture swap (λ_t = ``encoder.texture_swap``): G(corr(E_s(x_A)), E_t(x_B)) must keep A's layout:
  perceptual distance to x̂_A (pairs (A, B) = (i, i ^ 1) within a chunk).

The generator is frozen (no gradients to it; gradients flow *through* it to the encoder). The
loop reuses the generator stage's infrastructure: the run directory (``run_dir``), data stream
(``data``), distributed helpers, per-chunk seeding and NaN check (``generator_step``); only what a
step is and what a checkpoint holds differ.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from coordgan_cli import losses
from coordgan_cli.config import Recipe, recipe_from_dict
from coordgan_cli.errors import UserError
from coordgan_cli.inference import encoder_checkpoint_payload, generator_state
from coordgan_cli.io.checkpoint import (
    capture_rng_state, checkpoint_recipe, file_sha256, load_checkpoint, load_state_strict, restore_rng_state,
    save_checkpoint,
)
from coordgan_cli.models import Encoder, Generator, encoder_kwargs, generator_kwargs
from coordgan_cli.perceptual import build_perceptual
from coordgan_cli.training import distributed
from coordgan_cli.training.data import ImageFolderData
from coordgan_cli.training.generator_step import (
    StepContext, check_batch_split, chunk_generator, non_finite, pair_partner,
)
from coordgan_cli.training.run_dir import RunDir
from coordgan_cli.training.samples import colour_correspondence

# Purposes of the per-chunk random generators (distinct from the generator stage's).
_E_CODES, _E_INIT = 21, 22
SAMPLE_IMAGES = 4
# Recipe fields that may change when an encoder run is resumed.
RESUMABLE_CHANGES = {"schedule", "data.path", "data.workers", "output.dir", "encoder.steps"}
MAIN_LOSSES = ("rec_l1", "rec_perceptual", "con_code", "con_map", "texture_swap")


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
    for local in range(ctx.chunks_per_rank):
        chunk = ctx.dist.rank * ctx.chunks_per_rank + local
        n = ctx.chunk_size
        start = step * ctx.recipe.optim.batch + chunk * n
        real = ctx.load_images(range(start, start + n)).to(ctx.dist.device)
        gen = chunk_generator(ctx.seed, step, chunk, _E_CODES, ctx.dist.device)
        partner = pair_partner(n, real.device)

        w_s, w_plus = enc(real)
        corr = g.correspondence(w_s)
        # Reconstruction and texture swap in one batched synthesis.
        both = g.synthesize(torch.cat([corr, corr]), torch.cat([w_plus, w_plus[partner]]), noise="const")
        recon, tex_swap = both.chunk(2)
        rec_l1, rec_perc = reconstruction_loss(recon, real, ctx.perceptual)
        parts = {"rec_l1": rec_l1, "rec_perceptual": rec_perc,
                 "texture_swap": losses.texture_swap_loss(recon, tex_swap, ctx.perceptual)}

        with torch.no_grad():
            z = torch.randn(2, n, g.latent_dim, generator=gen, device=ctx.dist.device)
            w_true = g.map_structure(z[0])
            corr_true = g.correspondence(w_true)
            fake = g.synthesize(corr_true, g.texture_plus(g.map_texture(z[1])), generator=gen)
        w_hat = enc.encode_structure(fake)
        parts["con_code"], parts["con_map"] = latent_consistency_loss(w_hat, w_true, g.correspondence(w_hat), corr_true)

        total = (cfg.reconstruction * (rec_l1 + rec_perc) + cfg.consistency * (parts["con_code"] + parts["con_map"])
                 + cfg.texture_swap * parts["texture_swap"])
        (total * scale).backward()
        for k, v in parts.items():
            logs[k] = logs.get(k, 0.0) + v.item() * scale
        logs["e_total"] = logs.get("e_total", 0.0) + total.item() * scale
    ctx.dist.average_gradients([p for p in enc.parameters() if p.requires_grad])
    state.optimizer.step()
    state.step = step + 1
    return logs


@torch.no_grad()
def encoder_sample_grid(encoder: Encoder, generator: Generator, real: torch.Tensor) -> "np.ndarray":  # noqa: F821
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
# The loop


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


def _resumable(key: str) -> bool:
    return key in RESUMABLE_CHANGES or key.split(".")[0] in RESUMABLE_CHANGES


def _differences(a: Recipe, b: Recipe) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s, t in da.items() if isinstance(t, dict) for k, v in t.items() if db[s].get(k) != v]


def prepare(options: EncoderTrainOptions, device: torch.device, reporter: Any):
    """Build or resume: returns (recipe, state, facts, run, resumed_from, generator_state_dict)."""
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
        if run.path.exists() and any(p.name != "samples" for p in run.path.iterdir()) \
                and not (run.path / "config.json").is_file():
            raise UserError(f"{run.path}: exists, is not empty and holds no coordgan run; choose another --out")
        return recipe, build_encoder_state(recipe, encoder, generator), facts, run, None, gstate, gsha
    data = load_checkpoint(newest)
    if data["kind"] != "encoder":
        raise UserError(f"{run.path}: holds a {data['kind']} run, not an encoder run; choose another --out")
    recorded = (data.get("extra") or {}).get("generator_sha256")
    if recorded != gsha:
        raise UserError(f"{newest}: this encoder run was trained against the generator checkpoint with sha256 "
                        f"{str(recorded)[:12]}…, but {gpath} has sha256 {gsha[:12]}…; resume with the same generator "
                        "file, or start a new run (another --out)")
    stored = checkpoint_recipe(data, newest)
    fixed = [k for k in _differences(stored, recipe) if not _resumable(k)]
    if fixed:
        raise UserError(f"{run.path}: this run was started with a different recipe ({', '.join(fixed)} differ); "
                        "resume with the same recipe, or pass a new --out")
    d = recipe.to_dict()
    recipe = recipe_from_dict({**stored.to_dict(), "schedule": d["schedule"], "data": d["data"], "output": d["output"],
                               "encoder": d["encoder"], "name": recipe.name}, source=str(newest))
    load_state_strict(encoder, data["networks"]["encoder"], "encoder", newest)
    state = build_encoder_state(recipe, encoder, generator)
    state.optimizer.load_state_dict(data["optimizers"]["encoder"])
    state.step = int(data["step"])
    if "rng" in data:
        restore_rng_state(data["rng"])
    extra = dict(data.get("extra") or {})
    facts.update(seed=extra.get("seed", options.seed), skipped_files=extra.get("skipped_files", []))
    return recipe, state, facts, run, newest, gstate, gsha


def train_encoder(options: EncoderTrainOptions, reporter: Any) -> dict[str, Any]:
    """Run (or resume) encoder training to ``min(encoder.steps, max_steps)``; returns a summary dict."""
    dist = distributed.setup(options.device)
    try:
        return _train(options, dist, reporter)
    finally:
        distributed.teardown(dist)


def _train(options: EncoderTrainOptions, dist: distributed.Distributed, reporter: Any) -> dict[str, Any]:
    check_batch_split(options.recipe, dist.world_size)
    if dist.is_main:
        RunDir(options.run).ensure_writable()
    dist.barrier()
    recipe, state, facts, run, resumed_from, gstate, gsha = prepare(options, dist.device, reporter)
    seed = int(facts["seed"])
    skipped: list[str] = list(facts.get("skipped_files", []))

    def on_skip(path: Path, message: str) -> None:
        skipped.append(str(path))
        if dist.is_main:
            reporter.message(f"warning: skipping unreadable image {message}")

    data = ImageFolderData(recipe.data.path, recipe.model.size, seed=seed, hflip=recipe.data.hflip, on_skip=on_skip)
    perceptual = build_perceptual(recipe.losses.perceptual, dist.device)
    ctx = StepContext(recipe, seed, perceptual, dist, data.batch)
    target = recipe.encoder.steps if options.max_steps is None else min(options.max_steps, recipe.encoder.steps)
    sched = recipe.schedule
    if dist.is_main:
        run.write_config(recipe, {**facts, "generator_sha256": gsha})
        run.truncate_metrics(state.step)
        where = f"resuming from {resumed_from} at step {state.step}" if resumed_from else "new run"
        reporter.message(f"{run.path}: encoder {where}; {len(data)} training images in {data.root}; generator "
                         f"{options.generator_checkpoint} (frozen); {dist.world_size} process(es) on {dist.device}")
    # Fixed sample images (the first stream positions, not flipped): grids differ only by training.
    sample_real = ImageFolderData(recipe.data.path, recipe.model.size, seed=seed, hflip=False).batch(
        range(min(SAMPLE_IMAGES, len(data)))).to(dist.device)

    def save() -> None:
        facts["skipped_files"] = sorted(set(skipped))
        if dist.is_main:
            payload = encoder_checkpoint_payload(
                recipe, state.encoder.state_dict(), gstate, gsha, state.step, generator_step=facts["generator_step"],
                optimizers={"encoder": state.optimizer.state_dict()}, rng=capture_rng_state(), extra=facts)
            path = save_checkpoint(run.checkpoint_path(state.step), payload)
            run.commit_checkpoint(path, sched.keep_checkpoints)
        dist.barrier()

    reporter.start(state.step, target)
    window: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    try:
        while state.step < target:
            logs = dist.average_scalars(encoder_step(state, ctx))
            bad = non_finite(logs)
            if bad is not None:
                last = run.newest_checkpoint()
                raise UserError(f"loss {bad} became {logs[bad]} at step {state.step}; stopped without saving. The "
                                f"last good checkpoint is {last if last else '(none yet)'}; lower optim.lr and rerun",
                                exit_code=3)
            for k, v in logs.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            step = state.step
            reporter.step(step, logs)
            if dist.is_main and (step % sched.log_every == 0 or step == target):
                elapsed = time.perf_counter() - window_start
                run.append_metrics({"step": step, "its": window_steps / max(elapsed, 1e-9),
                                    "images": step * recipe.optim.batch, "skipped_files": len(set(skipped)),
                                    **{k: v / window_steps for k, v in window.items()}})
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if dist.is_main and (step % sched.sample_every == 0 or step == target):
                run.write_sample(step, encoder_sample_grid(state.encoder, state.generator, sample_real))
            if step % sched.checkpoint_every == 0 or step == target:
                save()
    finally:
        reporter.stop()
    latest = run.path / "latest.pt"
    return {"run": str(run.path), "step": state.step, "checkpoint": str(latest) if latest.exists() else None,
            "skipped_files": sorted(set(skipped))}


def frozen_generator_unchanged(generator: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """True when ``generator``'s weights still equal ``state`` (the generator must stay frozen)."""
    own = generator.state_dict()
    return all(torch.equal(own[k].cpu(), v.cpu()) for k, v in state.items())
