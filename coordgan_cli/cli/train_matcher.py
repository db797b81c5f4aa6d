"""``coordgan train-matcher``: train the correlation matcher (CoCosNet features, MCL-Net loss)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from coordgan_cli.cli._common import get_state, info, make_progress
from coordgan_cli.cli.train import MaxStepsOption, SetOption, check_max_steps
from coordgan_cli.config import load_recipe
from coordgan_cli.errors import UserError


def train_matcher_command(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="Recipe TOML with a [matcher] section (e.g. recipes/matcher-synthetic.toml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; an existing run resumes from its latest.pt."),
    store: Optional[Path] = typer.Option(None, "--store", help="Ground-truth correspondence store (`coordgan synth` "
                                         "ROOT/correspondence.h5) to draw pairs from."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of --store (default: images/ beside it)."),
    gan: Optional[Path] = typer.Option(None, "--gan", help="Trained CoordGAN checkpoint to sample pairs from instead."),
    max_steps: MaxStepsOption = None,
    set_: SetOption = [],
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and pair source, then stop."),
) -> None:
    """Train a dense feature matcher with the marginal contrastive loss.

    Positives are pixels with equal canonical coordinates in two images — from a synthetic
    ground-truth store (--store) or from two samples of a trained CoordGAN (--gan).
    """
    from coordgan_cli.training.matcher import GanPairSource, StorePairSource, train_matcher

    state = get_state(ctx)
    resolved = load_recipe(recipe, set_)
    if (store is None) == (gan is None):
        raise UserError("give exactly one pair source: --store STORE (with --images DIR) or --gan CHECKPOINT")
    if gan is not None and images is not None:
        raise UserError("--images belongs to --store; --gan draws its own images")
    check_max_steps(max_steps)
    device = state.torch_device()
    if store is not None:
        if not store.is_file():
            raise UserError(f"--store {store}: file not found")
        source = StorePairSource(store, images if images is not None else store.parent / "images")
    else:
        source = GanPairSource(gan, device)

    if dry_run:
        try:
            from coordgan_cli.training.run_dir import recipe_to_toml

            typer.echo(recipe_to_toml(resolved), nl=False)
        except ImportError:
            typer.echo(json.dumps(resolved.to_dict(), indent=2))
        typer.echo(f"# pairs: {json.dumps(source.describe())}")
        return

    total = resolved.matcher.steps if max_steps is None else min(resolved.matcher.steps, max_steps)
    info(f"matcher: {json.dumps(source.describe())} → {out}", state)
    progress = make_progress(state)
    task = None
    t0 = time.perf_counter()
    first: list[int] = []

    def on_step(step: int, target: int, metrics: dict) -> None:
        nonlocal task
        if task is None:
            first.append(step - 1)
            task = progress.add_task("train-matcher", total=target, completed=step - 1, rate="")
        rate = (step - first[0]) / max(time.perf_counter() - t0, 1e-9)
        progress.update(task, completed=step,
                        rate=f"{rate:.2f} it/s  loss {metrics['loss']:.3f}  acc {metrics['accuracy']:.2f}")

    with progress:
        metrics = train_matcher(resolved, out, source, device=device, seed=state.seed, max_steps=max_steps,
                                on_step=on_step)
    if metrics:
        info(f"step {metrics['step']}/{total}: loss {metrics['loss']:.4f}, match accuracy {metrics['accuracy']:.3f}; "
             f"checkpoint {out / 'latest.pt'}", state)
    else:
        info(f"already at step {total}: {out / 'latest.pt'}", state)


def register(app: typer.Typer) -> None:
    app.command("train-matcher")(train_matcher_command)
