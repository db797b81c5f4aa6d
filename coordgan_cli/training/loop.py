"""The training driver shared by the stages, and the generator stage's set-up.

``run_training(...)`` runs any :class:`Stage` (the generator stage here, the encoder stage in
``encoder_step``) to its target step: it joins the distributed job, prepares the run directory,
the image stream and the perceptual network, and loops. The loop only decides *when*: step,
log, sample, checkpoint, stop. What a step does, what a checkpoint holds and what a sample grid
shows belong to the stage; where things are written lives in ``run_dir``.

Exact resume: a checkpoint holds every network, the EMA generator, the optimiser states, the
step and the RNG states; all the randomness of a step is drawn from generators seeded by
(seed, step, chunk), and the data order is a function of (seed, position). A run resumed from
step k therefore continues bit for bit as the uninterrupted run would (on CPU; on GPUs as far
as the kernels are deterministic).
"""

from __future__ import annotations

import contextlib

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch

from coordgan_cli.config import Recipe, recipe_from_dict
from coordgan_cli.device import seed_everything
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import (
    capture_rng_state, checkpoint_recipe, file_sha256, load_checkpoint, load_state_strict, restore_rng_state,
    save_checkpoint,
)
from coordgan_cli.io.paths import removed_on_failure
from coordgan_cli.models import (
    Discriminator, Generator, PatchDiscriminator, discriminator_kwargs, generator_kwargs, patch_discriminator_kwargs,
)
from coordgan_cli.perceptual import build_perceptual
from coordgan_cli.training import distributed
from coordgan_cli.training.data import ImageFolderData
from coordgan_cli.training.generator_step import (
    _SAMPLES, StepContext, TrainState, build_train_state, check_batch_split, chunk_generator, non_finite, train_step,
)
from coordgan_cli.training.health import health_codes, inverted_layout_warning, measure_health
from coordgan_cli.training.run_dir import RunDir
from coordgan_cli.training.samples import sample_grid

# Recipe fields that may change when a run is resumed (everything else must match).
RESUMABLE_CHANGES = {"schedule", "data.path", "data.workers", "output.dir"}
STRUCTURE_NETWORKS = ["generator.mapping_structure", "generator.warp", "generator.backward_mlp"]
FREEZE_D_LAYERS = ["discriminator.convs.0.", "discriminator.convs.1.", "discriminator.convs.2."]
SAMPLE_CODES = 4


def build_gan(cfg) -> dict[str, torch.nn.Module]:
    """The three networks the generator stage trains (no encoder), on the current default device."""
    return {"generator": Generator(**generator_kwargs(cfg)), "discriminator": Discriminator(**discriminator_kwargs(cfg)),
            "patch_discriminator": PatchDiscriminator(**patch_discriminator_kwargs(cfg))}


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=3)


@dataclass
class Finetune:
    """Where a fine-tuning run starts and what it freezes."""

    checkpoint: Path
    new_domain: bool = False


@dataclass
class TrainOptions:
    recipe: Recipe
    run: Path
    device: torch.device
    seed: int = 0
    max_steps: Optional[int] = None
    finetune: Optional[Finetune] = None


class Reporter(Protocol):
    def message(self, text: str) -> None: ...
    def start(self, first_step: int, target: int) -> None: ...
    def step(self, step: int, logs: dict[str, float]) -> None: ...
    def stop(self) -> None: ...


class SilentReporter:
    def message(self, text: str) -> None:
        pass

    def start(self, first_step: int, target: int) -> None:
        pass

    def step(self, step: int, logs: dict[str, float]) -> None:
        pass

    def stop(self) -> None:
        pass


def recipe_differences(a: Recipe, b: Recipe) -> list[str]:
    """Dotted keys whose values differ between two recipes (name ignored)."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for section, table in da.items():
        if not isinstance(table, dict):
            continue
        out += [f"{section}.{k}" for k, v in table.items() if db[section].get(k) != v]
    return out


def resumed_recipe(stored: Recipe, recipe: Recipe, run: RunDir, source: Path, resumable: set[str]) -> Recipe:
    """The recipe a resumed run goes on with: the stored one (architecture, objective), with the
    sections named in ``resumable`` ("schedule", or "data" of "data.path") taken from ``recipe``.
    Raises UserError when a key outside ``resumable`` (a dotted key or a whole section) differs."""
    fixed = [k for k in recipe_differences(stored, recipe) if k not in resumable and k.split(".")[0] not in resumable]
    if fixed:
        raise UserError(f"{run.path}: this run was started with a different recipe ({', '.join(fixed)} differ); "
                        "resume with the same recipe, or pass a new --out")
    new = recipe.to_dict()
    sections = {key.split(".")[0]: new[key.split(".")[0]] for key in sorted(resumable)}
    return recipe_from_dict({**stored.to_dict(), **sections, "name": recipe.name}, source=str(source))


# ---------------------------------------------------------------------------------------------
# Set-up: a fresh run, a resumed one, or a fine-tuning start


def _load_finetune_start(networks: dict, recipe: Recipe, ft: Finetune, reporter: Reporter) -> list[str]:
    """Copy a trained model into the (possibly larger) networks of ``recipe``; return what to freeze."""
    data = load_checkpoint(ft.checkpoint)
    if data.get("kind") != "generator":
        raise UserError(f"{ft.checkpoint}: a {data.get('kind')} checkpoint; finetune needs one written by "
                        "`coordgan train`")
    old = checkpoint_recipe(data, ft.checkpoint)
    new_m, old_m = dataclasses.asdict(recipe.model), dataclasses.asdict(old.model)
    differ = [k for k in new_m if k not in ("size", "highres_channels") and new_m[k] != old_m[k]]
    if differ:
        raise UserError(f"{ft.checkpoint}: the checkpoint's model differs from the recipe's in "
                        f"{', '.join('model.' + k for k in differ)}; fine-tuning keeps the trained architecture "
                        "(only high-resolution blocks may be appended)")
    old_hr, new_hr = list(old_m["highres_channels"]), list(new_m["highres_channels"])
    if new_hr[: len(old_hr)] != old_hr:
        raise UserError(f"{ft.checkpoint}: its high-resolution blocks {old_hr} are not a prefix of the recipe's "
                        f"model.highres_channels {new_hr}")
    g = networks["generator"]
    state = data["networks"]["generator"]
    own = g.state_dict()
    bad = [k for k in state if k not in own or tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise UserError(f"{ft.checkpoint}: the generator weights belong to another architecture ({len(bad)} "
                        f"tensor(s) do not fit, e.g. {bad[0]})")
    source = data.get("ema", {}).get("generator", state)  # start from the smoothed weights
    g.load_state_dict(source, strict=False)
    for name in ("discriminator", "patch_discriminator"):
        module, saved = networks[name], data["networks"].get(name)
        if saved is not None and all(k in saved and saved[k].shape == v.shape for k, v in module.state_dict().items()) \
                and len(saved) == len(module.state_dict()):
            load_state_strict(module, saved, name, ft.checkpoint)
        else:
            reporter.message(f"{name}: new input size, trained from scratch")
    frozen = list(STRUCTURE_NETWORKS)
    if ft.new_domain:
        frozen += FREEZE_D_LAYERS
        if old_hr != new_hr:
            reporter.message("note: --new-domain with new high-resolution blocks: the frozen discriminator layers "
                             "are freshly initialised (FreezeD expects a discriminator trained at this size)")
    return frozen


def prepare(options: TrainOptions, dist: distributed.Distributed, reporter: Reporter) -> "GeneratorStage":
    """Build or resume the run."""
    run = RunDir(options.run)
    recipe = options.recipe
    newest = run.newest_checkpoint()
    device = dist.device
    if newest is not None:
        data = run.load_newest(map_location="cpu")
        recipe = resumed_recipe(checkpoint_recipe(data, newest), recipe, run, newest, RESUMABLE_CHANGES)
        facts = dict(data.get("extra", {}))
        with torch.device(device):
            networks = build_gan(recipe.model)
        for name in ("generator", "discriminator", "patch_discriminator"):
            load_state_strict(networks[name], data["networks"][name], name, newest)
        state = build_train_state(recipe, networks, list(facts.get("frozen", [])))
        load_state_strict(state.generator_ema, data["ema"]["generator"], "EMA generator", newest)
        for name, opt in state.optimizers.items():
            opt.load_state_dict(data["optimizers"][name])
        state.step = int(data["step"])
        if "rng" in data:
            restore_rng_state(data["rng"])
        if facts.get("seed") != options.seed and options.seed != 0:
            reporter.message(f"resuming with the run's own seed {facts.get('seed')} (--seed {options.seed} ignored)")
        return GeneratorStage(recipe, state, facts, run, newest)

    run.check_new_run()
    seed_everything(options.seed)  # initial weights are a function of the seed
    with torch.device(device):
        networks = build_gan(recipe.model)
    facts: dict[str, Any] = {"seed": options.seed, "stage": "train", "frozen": []}
    if options.finetune is not None:
        frozen = _load_finetune_start(networks, recipe, options.finetune, reporter)
        facts.update(stage="finetune-new-domain" if options.finetune.new_domain else "finetune",
                     frozen=frozen, finetune_from=str(options.finetune.checkpoint),
                     finetune_sha256=file_sha256(options.finetune.checkpoint))
    state = build_train_state(recipe, networks, facts["frozen"])
    if options.finetune is not None:
        state.generator_ema.load_state_dict(state.generator.state_dict())
    return GeneratorStage(recipe, state, facts, run, None)


@dataclass
class GeneratorStage:
    """The generator stage as ``run_training`` drives it (see :class:`Stage`)."""

    recipe: Recipe
    state: TrainState
    facts: dict[str, Any]
    run: RunDir
    resumed_from: Optional[Path]
    diverged_hint: str = "lower optim.lr or raise losses.r1_image, then rerun to resume from it"
    warned_inverted: bool = False

    @property
    def steps(self) -> int:
        return self.recipe.schedule.steps

    def health(self) -> tuple[dict[str, float], Optional[str]]:
        """Health numbers of the generator being trained (``training.health``) on the run's fixed
        probe codes, and — once per process, after the warm-up — a warning when the layout ratio is
        inverted (texture swaps move the layout more than structure swaps)."""
        g = self.state.generator
        device = next(g.parameters()).device
        z_s, z_t = health_codes(g.latent_dim, int(self.facts["seed"]), device=device)
        values = measure_health(g, z_s, z_t)
        message = None
        if (not self.warned_inverted and self.state.step >= self.recipe.losses.warmup_steps
                and values["layout_ratio"] < 1.0):
            self.warned_inverted = True
            message = inverted_layout_warning(values, self.state.step)
        return values, message

    def config_facts(self) -> dict[str, Any]:
        return self.facts

    def start_message(self, where: str, data: ImageFolderData, dist: distributed.Distributed) -> str:
        return (f"{self.run.path}: {where}; {len(data)} training images in {data.root}; "
                f"{dist.world_size} process(es) on {dist.device}")

    def train_step(self, ctx: StepContext) -> dict[str, float]:
        return train_step(self.state, ctx)

    def payload(self) -> dict[str, Any]:
        state = self.state
        return {"kind": "generator", "step": state.step, "config": self.recipe.to_json(),
                "networks": {k: m.state_dict() for k, m in state.modules().items()},
                "ema": {"generator": state.generator_ema.state_dict()},
                "optimizers": {k: o.state_dict() for k, o in state.optimizers.items()},
                "rng": capture_rng_state(), "extra": self.facts}

    def sampler(self, data: ImageFolderData, device: torch.device) -> Callable[[], np.ndarray]:
        """Grids of the EMA generator for fixed codes (drawn from the run seed alone)."""
        gen = chunk_generator(int(self.facts["seed"]), 0, 0, _SAMPLES, torch.device("cpu"))
        codes = torch.randn(2, SAMPLE_CODES, self.state.generator.latent_dim, generator=gen).to(device)
        ema = self.state.generator_ema

        def grid() -> np.ndarray:
            ema.eval()
            return sample_grid(ema, codes[0], codes[1])

        return grid


# ---------------------------------------------------------------------------------------------
# The driver


class Stage(Protocol):
    """A prepared (new or resumed) training stage: what ``run_training`` needs to drive it."""

    recipe: Recipe                # resolved (on resume: the stored architecture, the new schedule)
    state: Any                    # what a step changes; ``state.step`` = steps done
    facts: dict[str, Any]         # run facts (seed, stage, ...), stored in every checkpoint
    run: RunDir
    resumed_from: Optional[Path]  # the checkpoint resumed from; None for a new run
    diverged_hint: str            # advice ending the non-finite-loss error

    @property
    def steps(self) -> int: ...   # the stage's full length (``--max-steps`` may stop earlier)

    def config_facts(self) -> dict[str, Any]: ...  # what config.json records beside the recipe
    def start_message(self, where: str, data: ImageFolderData, dist: distributed.Distributed) -> str: ...
    def train_step(self, ctx: StepContext) -> dict[str, float]: ...  # one update; advances state.step
    def payload(self) -> dict[str, Any]: ...  # the checkpoint of the current state, RNG included
    def sampler(self, data: ImageFolderData, device: torch.device) -> Callable[[], np.ndarray]: ...


def train(options: TrainOptions, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume) the generator stage to ``min(schedule.steps, max_steps)``; returns a summary dict."""
    reporter = reporter or SilentReporter()
    return run_training(options.recipe, options.run, options.device, options.max_steps, reporter,
                        lambda dist: prepare(options, dist, reporter))


def run_training(recipe: Recipe, run: Path, device: torch.device, max_steps: Optional[int], reporter: Reporter,
                 prepare_stage: Callable[[distributed.Distributed], Stage]) -> dict[str, Any]:
    """Join the (torchrun) job on ``device``, check ``recipe``'s batch split and that the run
    directory ``run`` is writable, build or resume the stage with ``prepare_stage(dist)`` and train
    it to ``min(stage.steps, max_steps)``. Returns {"run", "step", "checkpoint", "skipped_files"}."""
    dist = distributed.setup(device)
    run_dir = RunDir(run)
    # A run folder this command made is removed again if it fails before its first checkpoint
    # (rank 0 owns the folder; other ranks never create or remove it).
    cleanup = removed_on_failure(run, lambda: run_dir.newest_checkpoint() is not None) if dist.is_main \
        else contextlib.nullcontext()
    try:
        with cleanup:
            check_batch_split(recipe, dist.world_size)
            if dist.is_main:
                run_dir.ensure_writable()
                run_dir.remove_stale_temporaries()
            dist.barrier()
            return _drive(prepare_stage(dist), dist, max_steps, reporter)
    finally:
        distributed.teardown(dist)


def _drive(stage: Stage, dist: distributed.Distributed, max_steps: Optional[int], reporter: Reporter) -> dict[str, Any]:
    """The loop proper: set up data, perceptual network and run files, then step until the target,
    logging, sampling and checkpointing when due."""
    recipe, state, facts, run = stage.recipe, stage.state, stage.facts, stage.run
    seed = int(facts["seed"])
    skipped: list[str] = list(facts.get("skipped_files", []))

    def on_skip(path: Path, message: str) -> None:
        skipped.append(str(path))
        if dist.is_main:
            reporter.message(f"warning: skipping unreadable image {message}")

    data = ImageFolderData(recipe.data.path, recipe.model.size, seed=seed, hflip=recipe.data.hflip, on_skip=on_skip)
    perceptual = build_perceptual(recipe.losses.perceptual, dist.device)
    ctx = StepContext(recipe, seed, perceptual, dist, data.batch)
    target = stage.steps if max_steps is None else min(max_steps, stage.steps)
    sched = recipe.schedule
    if dist.is_main:
        run.write_config(recipe, stage.config_facts())
        run.truncate_metrics(state.step)
        where = f"resuming from {stage.resumed_from} at step {state.step}" if stage.resumed_from else "new run"
        reporter.message(stage.start_message(where, data, dist))
    sample = stage.sampler(data, dist.device)

    def due(every: int) -> bool:
        return state.step % every == 0 or state.step == target

    def save() -> None:
        facts["skipped_files"] = sorted(set(skipped))
        if dist.is_main:
            path = save_checkpoint(run.checkpoint_path(state.step), stage.payload())
            run.commit_checkpoint(path, sched.keep_checkpoints)
        dist.barrier()

    reporter.start(state.step, target)
    window: dict[str, float] = {}  # sums of the logged values since the last metrics line
    window_steps, window_start = 0, time.perf_counter()
    try:
        while state.step < target:
            logs = dist.average_scalars(stage.train_step(ctx))
            bad = non_finite(logs)
            if bad is not None:
                last = run.newest_checkpoint()
                raise TrainingDiverged(
                    f"loss {bad} became {logs[bad]} at step {state.step}; stopped without saving. The last good "
                    f"checkpoint is {last if last else '(none yet)'}; {stage.diverged_hint}")
            for k, v in logs.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            health: dict[str, float] = {}
            if dist.is_main and due(sched.log_every) and hasattr(stage, "health"):
                # No gradients, constant noise, private codes: the training randomness is untouched.
                health, warning = stage.health()
                if warning:
                    reporter.message(warning)
            reporter.step(state.step, {**logs, **health})
            if dist.is_main and due(sched.log_every):
                its = window_steps / max(time.perf_counter() - window_start, 1e-9)
                means = {k: v / window_steps for k, v in window.items()}
                run.append_metrics({"step": state.step, "its": its, "images": state.step * recipe.optim.batch,
                                    "skipped_files": len(set(skipped)), **means, **health})
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if dist.is_main and due(sched.sample_every):
                run.write_sample(state.step, sample())
            if due(sched.checkpoint_every):
                save()
    finally:
        reporter.stop()
    latest = run.path / "latest.pt"
    return {"run": str(run.path), "step": state.step, "checkpoint": str(latest) if latest.exists() else None,
            "skipped_files": sorted(set(skipped))}
