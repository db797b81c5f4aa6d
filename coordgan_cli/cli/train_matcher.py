"""``coordgan train-matcher``: train the correlation matcher (CoCosNet features, MCL-Net loss)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer

from coordgan_cli.cli._common import AppState, get_state, info, make_progress
from coordgan_cli.cli.train import MaxStepsOption, SetOption, check_max_steps
from coordgan_cli.config import load_recipe
from coordgan_cli.errors import UserError

if TYPE_CHECKING:
    import torch

    from coordgan_cli.config import Recipe
    from coordgan_cli.training.distributed import Distributed
    from coordgan_cli.training.matcher import PairSource


def train_matcher_command(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Argument(None, help="Recipe TOML with a \\[matcher] section (e.g. "
                                            "recipes/matcher-synthetic.toml; with --data: optional, e.g. "
                                            "recipes/matcher-adapt.toml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; an existing run resumes from its latest.pt."),
    store: Optional[Path] = typer.Option(None, "--store", help="Ground-truth correspondence store (`coordgan synth` "
                                         "ROOT/correspondence.h5) to draw pairs from."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of --store (default: images/ beside it)."),
    gan: Optional[Path] = typer.Option(None, "--gan", help="Trained CoordGAN checkpoint to sample pairs from instead."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of unlabelled photos: train a projection head on "
                                        "a pretrained backbone with warped copies of them (for --matcher features)."),
    backbone: str = typer.Option("inception", "--backbone", help="With --data: the frozen pretrained backbone."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights",
                                                    help="With --data: weights file of --backbone (if it needs one)."),
    max_steps: MaxStepsOption = None,
    set_: SetOption = [],
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and pair source, then stop."),
) -> None:
    """Train a dense feature matcher with the marginal contrastive loss.

    Positives are pixels with equal canonical coordinates in two images — from a synthetic
    ground-truth store (--store) or from two samples of a trained CoordGAN (--gan).

    With --data FOLDER (no labels needed): adapt the pretrained-feature matchers to your photos —
    a projection head on the frozen --backbone is trained on each photo and a randomly warped,
    colour-jittered copy (exact correspondence); use it with
    `propagate --matcher features --matcher-ckpt RUN/latest.pt`.

    Multi-process: torchrun --nproc_per_node=N -m coordgan_cli train-matcher RECIPE --out RUN --store S
    (gloo on CPU, NCCL on GPUs; matcher.batch must divide by N).
    """
    from coordgan_cli.io.paths import removed_on_failure
    from coordgan_cli.training import distributed
    from coordgan_cli.training.matcher import GanPairSource, StorePairSource, check_matcher_batch_split

    state = get_state(ctx)
    if sum(x is not None for x in (store, gan, data)) != 1:
        raise UserError("give exactly one pair source: --store STORE (with --images DIR), --gan CHECKPOINT "
                        "or --data FOLDER")
    if data is not None:
        _adapt(recipe, set_, data, backbone, backbone_weights, images, out, max_steps, dry_run, state)
        return
    if recipe is None:
        raise UserError("give a RECIPE with a [matcher] section (e.g. recipes/matcher-synthetic.toml)")
    resolved = load_recipe(recipe, set_)
    if gan is not None and images is not None:
        raise UserError("--images belongs to --store; --gan draws its own images")
    check_max_steps(max_steps, resolved.matcher.steps, "matcher.steps")
    if store is not None and not store.is_file():
        raise UserError(f"--store {store}: file not found")

    def pair_source(device: torch.device) -> PairSource:
        if store is not None:
            return StorePairSource(store, images)
        return GanPairSource(gan, device)

    if dry_run:
        source = pair_source(state.torch_device())
        try:
            from coordgan_cli.training.run_dir import recipe_to_toml

            typer.echo(recipe_to_toml(resolved), nl=False)
        except ImportError:
            typer.echo(json.dumps(resolved.to_dict(), indent=2))
        typer.echo(f"# pairs: {json.dumps(source.describe())}")
        return

    dist = distributed.setup(state.torch_device())  # a torchrun job, or this process alone
    # A run folder this command made goes again if it fails before its first checkpoint.
    cleanup = removed_on_failure(out, lambda: (out / "latest.pt").is_file()) if dist.is_main \
        else contextlib.nullcontext()
    try:
        with cleanup:
            check_matcher_batch_split(resolved.matcher, dist.world_size)
            _train(resolved, out, pair_source(dist.device), max_steps, state, dist)
    finally:
        distributed.teardown(dist)


def _step_reporter(progress) -> Callable[[int, int, dict], None]:
    """The trainers' per-step callback: a progress task (created at the first step seen, so a
    resumed run starts where it stopped) showing the rate, loss and match accuracy."""
    task = None
    t0 = time.perf_counter()
    first: list[int] = []

    def on_step(step: int, target: int, metrics: dict) -> None:
        nonlocal task
        if task is None:
            first.append(step - 1)
            task = progress.add_task("train-matcher", total=target, completed=step - 1, rate="", detail="")
        rate = (step - first[0]) / max(time.perf_counter() - t0, 1e-9)
        shown = f"loss {metrics['loss']:.3f}  acc {metrics['accuracy']:.2f}"
        progress.update(task, completed=step, rate=f"{rate:.2f} it/s  {shown}", detail=shown)

    return on_step


def _train(resolved: Recipe, out: Path, source: PairSource, max_steps: Optional[int], state: AppState,
           dist: Distributed) -> None:
    """Train on this process; rank 0 alone logs and shows the progress bar."""
    from coordgan_cli.training.matcher import train_matcher

    total = resolved.matcher.steps if max_steps is None else min(resolved.matcher.steps, max_steps)
    if not dist.is_main:
        train_matcher(resolved, out, source, device=dist.device, seed=state.seed, max_steps=max_steps, dist=dist)
        return
    processes = f"; {dist.world_size} processes on {dist.device}" if dist.active else ""
    info(f"matcher: {json.dumps(source.describe())} → {out}{processes}", state)
    progress = make_progress(state, unit="step")
    on_step = _step_reporter(progress)
    with progress:
        metrics = train_matcher(resolved, out, source, device=dist.device, seed=state.seed, max_steps=max_steps,
                                on_step=on_step, dist=dist)
    if metrics:
        info(f"step {metrics['step']}/{total}: loss {metrics['loss']:.4f}, match accuracy {metrics['accuracy']:.3f}; "
             f"checkpoint {out / 'latest.pt'}", state)
    else:
        info(f"already at step {total}: {out / 'latest.pt'}", state)


def _adapt(recipe: Optional[Path], set_: list[str], data: Path, backbone: str, backbone_weights: Optional[Path],
           images: Optional[Path], out: Path, max_steps: Optional[int], dry_run: bool, state: AppState) -> None:
    """``--data``: train a projection head on frozen backbone hypercolumns with warped pairs."""
    from coordgan_cli.backbones import load_backbone
    from coordgan_cli.config import Recipe, apply_overrides, recipe_from_dict
    from coordgan_cli.data.warp_pairs import WarpPairSource
    from coordgan_cli.io.paths import removed_on_failure
    from coordgan_cli.training.adapt import train_head

    if images is not None:
        raise UserError("--images belongs to --store; --data reads its photos itself")
    if recipe is not None:
        resolved = load_recipe(recipe, set_)
    else:
        resolved = recipe_from_dict(apply_overrides(Recipe(name="matcher-adapt").to_dict(), set_), "<defaults>")
    cfg = resolved.matcher
    check_max_steps(max_steps, cfg.steps, "matcher.steps")
    source = WarpPairSource(data, cfg.adapt_size, warp=cfg.warp, elastic=cfg.elastic, jitter=cfg.jitter)
    if dry_run:
        try:
            from coordgan_cli.training.run_dir import recipe_to_toml

            typer.echo(recipe_to_toml(resolved), nl=False)
        except ImportError:
            typer.echo(json.dumps(resolved.to_dict(), indent=2))
        typer.echo(f"# pairs: {json.dumps(source.describe())}")
        return
    device = state.torch_device()
    model = load_backbone(backbone, backbone_weights, device)
    total = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    info(f"projection head on {backbone}: {json.dumps(source.describe())} → {out}", state)
    progress = make_progress(state, unit="step")
    on_step = _step_reporter(progress)
    with removed_on_failure(out, lambda: (out / "latest.pt").is_file()), progress:
        metrics = train_head(resolved, out, source, model, device=device, seed=state.seed, max_steps=max_steps,
                             on_step=on_step)
    if metrics:
        info(f"step {metrics['step']}/{total}: loss {metrics['loss']:.4f}, match accuracy {metrics['accuracy']:.3f}; "
             f"checkpoint {out / 'latest.pt'} (use: --matcher features --matcher-ckpt {out / 'latest.pt'})", state)
    else:
        info(f"already at step {total}: {out / 'latest.pt'}", state)


def register(app: typer.Typer) -> None:
    app.command("train-matcher")(train_matcher_command)
