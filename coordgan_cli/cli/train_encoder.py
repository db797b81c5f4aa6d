"""``coordgan train-encoder GAN_CKPT RECIPE --out RUN``: the encoder stage (DESIGN §3)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Optional

import typer

from coordgan_cli.cli._common import get_state, info, warn
from coordgan_cli.cli.train import RichReporter
from coordgan_cli.errors import UserError

_SHORT = {"rec_l1": "L1", "rec_perceptual": "perc", "con_code": "con_w", "con_map": "con_map", "texture_swap": "tex"}


class EncoderReporter(RichReporter):
    """The train progress bar, showing the encoder stage's losses."""

    def step(self, step: int, logs: dict[str, float]) -> None:
        if self.progress is None:
            return
        its = (step - self._first) / max(time.perf_counter() - self._t0, 1e-9)
        shown = "  ".join(f"{_SHORT[k]} {logs[k]:.3g}" for k in _SHORT if k in logs)
        self.progress.update(self.task, completed=step, rate=f"{its:.2f} it/s  {shown}")


def train_encoder_command(
    ctx: typer.Context,
    gan_ckpt: Path = typer.Argument(..., help="The trained generator checkpoint (e.g. RUN/latest.pt of coordgan train)."),
    recipe: Path = typer.Argument(..., help="Recipe TOML with an [encoder] section (the GAN's recipe works); the "
                                  "generator architecture comes from GAN_CKPT, encoder sizes (model.encoder_*) from here."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: the recipe's output.dir + "
                                       "'-encoder'). An existing run resumes from its newest checkpoint."),
    data: Optional[Path] = typer.Option(None, "--data", help="Real training images (overrides data.path)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop at total step N (with a checkpoint)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: section.key=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe as TOML and stop."),
) -> None:
    """Train the image encoder against a frozen generator (L1 + perceptual reconstruction, latent
    consistency, texture swap). The encoder checkpoint embeds the frozen generator and records its
    file's sha256, so RUN/latest.pt alone serves invert, propagate and swap.

    Multi-process: torchrun --nproc_per_node=N -m coordgan_cli train-encoder GAN_CKPT RECIPE --out RUN.
    """
    from coordgan_cli.config import load_recipe
    from coordgan_cli.io.checkpoint import load_checkpoint
    from coordgan_cli.training.encoder_step import EncoderTrainOptions, resolve_recipe, train_encoder
    from coordgan_cli.training.run_dir import recipe_to_toml

    state = get_state(ctx)
    resolved = load_recipe(recipe, set_)
    if data is not None:
        resolved = resolved.replace(data=dataclasses.replace(resolved.data, path=str(data)))
    if dry_run:
        full, _ = resolve_recipe(resolved, load_checkpoint(gan_ckpt), gan_ckpt)
        typer.echo(recipe_to_toml(full), nl=False)
        return
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    run = out if out is not None else Path(resolved.output.dir + "-encoder")
    rank = int(os.environ.get("RANK", "0"))
    reporter = EncoderReporter(state, enabled=rank == 0)
    options = EncoderTrainOptions(generator_checkpoint=gan_ckpt, recipe=resolved, run=run,
                                  device=state.torch_device(), seed=state.seed, max_steps=max_steps)
    summary = train_encoder(options, reporter)
    if rank == 0:
        info(f"step {summary['step']}: {summary['checkpoint']}", state)
        if summary["skipped_files"]:
            warn(f"{len(summary['skipped_files'])} unreadable image(s) were skipped (listed in the checkpoint)")


def register(app: typer.Typer) -> None:
    app.command("train-encoder")(train_encoder_command)
