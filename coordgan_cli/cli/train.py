"""``coordgan train`` and ``coordgan finetune``: the generator stage (DESIGN §3)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape

from coordgan_cli.cli._common import AppState, get_state, info, make_progress, warn
from coordgan_cli.config import Recipe, load_recipe
from coordgan_cli.errors import UserError

# The main losses of the generator stage, in the progress bar's order, with their short names.
GENERATOR_LOSSES = {"d": "D", "g_adv": "G", "chamfer": "cham", "warp": "warp", "texture_swap": "tex",
                    "structure_swap": "struct"}

# Training-health numbers (``training.health``), shown after the losses once measured.
HEALTH = {"map_displacement_px": "disp px", "layout_ratio": "layout", "map_follow": "follow"}

# Options every training command shares.
MaxStepsOption = Annotated[Optional[int], typer.Option("--max-steps", help="Stop at total step N (with a checkpoint).")]
SetOption = Annotated[list[str], typer.Option("--set", help="Override a recipe value: section.key=value (repeatable).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe as TOML and stop.")]


class RichReporter:
    """Progress bar on stderr: step n/total, it/s, ETA and the main losses (rank 0 only).

    ``losses``: the logged values to show, {log key: short name}, in display order."""

    def __init__(self, state: AppState, enabled: bool = True, losses: dict[str, str] = GENERATOR_LOSSES) -> None:
        self.state = state
        self.enabled = enabled
        self.losses = losses
        self.progress = None
        self.task = None
        self._t0 = 0.0
        self._first = 0
        self._health: dict[str, float] = {}  # the latest health numbers (measured every log_every steps)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if text.startswith("warning: "):
            warn(text[len("warning: "):])
        else:
            info(escape(text), self.state)

    def start(self, first_step: int, target: int) -> None:
        if not self.enabled or first_step >= target:
            return
        self.progress = make_progress(self.state, unit="step")
        self.progress.start()
        self.task = self.progress.add_task("train", total=target, completed=first_step, rate="", detail="")
        self._t0, self._first = time.perf_counter(), first_step

    def step(self, step: int, logs: dict[str, float]) -> None:
        if self.progress is None:
            return
        its = (step - self._first) / max(time.perf_counter() - self._t0, 1e-9)
        shown = "  ".join(f"{short} {logs[k]:.3g}" for k, short in self.losses.items() if k in logs)
        self._health.update({k: logs[k] for k in HEALTH if k in logs})
        if self._health:
            shown += "  |  " + "  ".join(f"{short} {self._health[k]:.2f}" for k, short in HEALTH.items()
                                         if k in self._health)
        self.progress.update(self.task, completed=step, rate=f"{its:.2f} it/s  {shown}", detail=shown)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def resolve_recipe_options(recipe_path: Path, overrides: list[str], data: Optional[Path]) -> Recipe:
    """The recipe with its ``--set`` overrides and ``--data`` folder applied."""
    recipe = load_recipe(recipe_path, overrides)
    if data is not None:
        recipe = recipe.replace(data=dataclasses.replace(recipe.data, path=str(data)))
    return recipe


def check_max_steps(max_steps: Optional[int], steps: Optional[int] = None, key: str = "schedule.steps") -> None:
    """``--max-steps`` is a stopping point inside the recipe's schedule (``key`` = ``steps``);
    beyond it the run would end at ``steps`` anyway, so say so instead of stopping silently."""
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    if max_steps is not None and steps is not None and max_steps > steps:
        raise UserError(f"--max-steps {max_steps} is beyond the recipe's {key} = {steps} (training ends there); "
                        f"to train longer, lengthen the schedule: --set {key}={max_steps}")


def run_stage(state: AppState, losses: dict[str, str], train: Callable[[RichReporter], dict[str, Any]]) -> None:
    """Run ``train(reporter)`` with a progress bar on rank 0 and report its summary there."""
    rank = int(os.environ.get("RANK", "0"))
    summary = train(RichReporter(state, enabled=rank == 0, losses=losses))
    if rank == 0:
        info(f"step {summary['step']}: {summary['checkpoint']}", state)
        if summary["skipped_files"]:
            warn(f"{len(summary['skipped_files'])} unreadable image(s) were skipped (listed in the checkpoint)")


def _run(ctx: typer.Context, recipe: Recipe, out: Optional[Path], max_steps: Optional[int], dry_run: bool,
         finetune=None) -> None:
    from coordgan_cli.training.loop import TrainOptions, train
    from coordgan_cli.training.run_dir import recipe_to_toml

    state = get_state(ctx)
    if dry_run:
        typer.echo(recipe_to_toml(recipe), nl=False)
        return
    check_max_steps(max_steps, recipe.schedule.steps, "schedule.steps")
    options = TrainOptions(recipe=recipe, run=Path(out) if out is not None else Path(recipe.output.dir),
                           device=state.torch_device(), seed=state.seed, max_steps=max_steps, finetune=finetune)
    run_stage(state, GENERATOR_LOSSES, lambda reporter: train(options, reporter))


def train_command(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="Recipe TOML (see recipes/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: the recipe's output.dir). "
                                       "An existing run resumes from its newest checkpoint."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training image folder (overrides data.path)."),
    max_steps: MaxStepsOption = None,
    set_: SetOption = [],
    dry_run: DryRunOption = False,
) -> None:
    """Train CoordGAN (generator, image and patch discriminators) on an image folder.

    Multi-process: torchrun --nproc_per_node=N -m coordgan_cli train RECIPE (gloo on CPU, NCCL on GPUs).
    """
    _run(ctx, resolve_recipe_options(recipe, set_, data), out, max_steps, dry_run)


def finetune_command(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="Checkpoint of a trained model (RUN/latest.pt)."),
    recipe: Path = typer.Argument(..., help="Fine-tuning recipe (e.g. recipes/celebamask-hq-512.toml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory of the fine-tuning run (resumes if it exists)."),
    new_domain: bool = typer.Option(False, "--new-domain", help="New domain: also freeze the first three image-"
                                    "discriminator layers (FreezeD)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training image folder (overrides data.path)."),
    max_steps: MaxStepsOption = None,
    set_: SetOption = [],
    dry_run: DryRunOption = False,
) -> None:
    """Continue a trained model at a higher resolution (appended upsampling blocks) or on a new domain.

    The structure mapping and warping networks are frozen; --new-domain also freezes the first three
    layers of the image discriminator.
    """
    from coordgan_cli.training.loop import Finetune

    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: checkpoint not found")
    _run(ctx, resolve_recipe_options(recipe, set_, data), out, max_steps, dry_run, Finetune(checkpoint, new_domain))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("finetune")(finetune_command)
