"""``coordgan synth``: synthetic object categories with exact ground-truth correspondence."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from coordgan_cli.cli._common import get_state, info, print_json, track
from coordgan_cli.data.categories import category_names
from coordgan_cli.data.synth_set import SynthSpec, write_synth_set
from coordgan_cli.data.synthetic import DIFFICULTIES
from coordgan_cli.io.paths import output_folder, removed_on_failure


def synth(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., help="Output folder (created; must be empty unless resuming or --overwrite)."),
    category: str = typer.Option(..., "--category", help=f"Object category: {', '.join(category_names())}."),
    count: int = typer.Option(..., "--count", help="Number of images."),
    size: int = typer.Option(128, "--size", help="Image side in pixels (16 to 1024)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the set (default: the root --seed)."),
    difficulty: str = typer.Option("medium", "--difficulty", help=f"{' | '.join(DIFFICULTIES)}: pose range, "
                                   "deformation, clutter; hard adds occluders and mirror flips."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the synth files already in OUT_DIR."),
    workers: int = typer.Option(1, "--workers", help="Render in this many processes (same files for any number)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Write a synthetic image set with exact ground truth: images/, masks/ + labels.json, the
    correspondence store correspondence.h5 (names relative to images/), COCO keypoints.json,
    metadata.json and README.txt. Rerunning the same command finishes an interrupted set."""
    state = get_state(ctx)
    spec = SynthSpec(category=category, count=count, size=size, seed=state.seed if seed is None else seed,
                     difficulty=difficulty)

    def progress(items, total):
        return track(items, total, f"synth {category}", state, unit="img")

    # A folder this command creates is removed again if it fails before writing an image.
    with removed_on_failure(out_dir, lambda: any((out_dir / "images").glob("*"))):
        output_folder(out_dir)
        result = write_synth_set(out_dir, spec, overwrite=overwrite, workers=workers, progress=progress)
    if json_out:
        print_json(asdict(result))
    else:
        resumed = f" (resumed after {result.resumed_from} finished)" if result.resumed_from else ""
        info(f"wrote {result.written} {category} images{resumed}: {out_dir} "
             f"[{spec.size}x{spec.size}, seed {spec.seed}, {spec.difficulty}]", state)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
