"""``coordgan train-encoder GAN_CKPT RECIPE --out RUN``: the encoder stage (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from coordgan_cli.cli._common import get_state
from coordgan_cli.cli.train import (
    DryRunOption, MaxStepsOption, SetOption, check_max_steps, resolve_recipe_options, run_stage,
)

# The encoder stage's losses in the progress bar, with their short names.
ENCODER_LOSSES = {"rec_l1": "L1", "rec_perceptual": "perc", "con_code": "con_w", "con_map": "con_map",
                  "texture_swap": "tex", "equivariance": "equi",
                  "warped_consistency": "wcon"}


def train_encoder_command(
    ctx: typer.Context,
    gan_ckpt: Path = typer.Argument(..., help="The trained generator checkpoint (e.g. RUN/latest.pt of coordgan train)."),
    recipe: Path = typer.Argument(..., help="Recipe TOML with an \\[encoder] section (the GAN's recipe works); the "
                                  "generator architecture comes from GAN_CKPT, encoder sizes (model.encoder_*) from here."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: the recipe's output.dir + "
                                       "'-encoder'). An existing run resumes from its newest checkpoint."),
    data: Optional[Path] = typer.Option(None, "--data", help="Real training images (overrides data.path)."),
    max_steps: MaxStepsOption = None,
    set_: SetOption = [],
    dry_run: DryRunOption = False,
) -> None:
    """Train the image encoder against a frozen generator (L1 + perceptual reconstruction, latent
    consistency, texture swap). The encoder checkpoint embeds the frozen generator and records its
    file's sha256, so RUN/latest.pt alone serves invert, propagate and swap.

    Multi-process: torchrun --nproc_per_node=N -m coordgan_cli train-encoder GAN_CKPT RECIPE --out RUN.
    """
    from coordgan_cli.io.checkpoint import load_checkpoint
    from coordgan_cli.training.encoder_step import EncoderTrainOptions, resolve_recipe, train_encoder
    from coordgan_cli.training.run_dir import recipe_to_toml

    state = get_state(ctx)
    resolved = resolve_recipe_options(recipe, set_, data)
    if dry_run:
        full, _ = resolve_recipe(resolved, load_checkpoint(gan_ckpt), gan_ckpt)
        typer.echo(recipe_to_toml(full), nl=False)
        return
    check_max_steps(max_steps, resolved.encoder.steps, "encoder.steps")
    options = EncoderTrainOptions(generator_checkpoint=gan_ckpt, recipe=resolved,
                                  run=out if out is not None else Path(resolved.output.dir + "-encoder"),
                                  device=state.torch_device(), seed=state.seed, max_steps=max_steps)
    run_stage(state, ENCODER_LOSSES, lambda reporter: train_encoder(options, reporter))


def register(app: typer.Typer) -> None:
    app.command("train-encoder")(train_encoder_command)
