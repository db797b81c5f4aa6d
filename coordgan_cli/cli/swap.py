"""``coordgan swap [CKPT] --structure A --texture B --out grid.png``: structure/texture swap grids
(without CKPT: the shipped CoordGAN model, or --model NAME)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from coordgan_cli.cli._common import get_state, info, print_json
from coordgan_cli.errors import UserError

HELP = """Swap grid: rows take the structure (layout) of each --structure source, columns the
texture (appearance) of each --texture source; beside every row its correspondence map
(x → red, y → green).

\b
A source is an image path (encoded by the encoder: needs an encoder checkpoint) or seed:N
(codes sampled from torch.Generator().manual_seed(N); works with generator checkpoints too).
Constant noise: the same checkpoint and sources always give the same grid.
"""


def swap_command(
    ctx: typer.Context,
    ckpt: Optional[Path] = typer.Argument(None, help="An encoder checkpoint, or a generator checkpoint (seed:N sources "
                                          "only). Default: the shipped CoordGAN model."),
    model_name: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see `coordgan "
                                        "models`) instead of CKPT."),
    structure: List[str] = typer.Option(..., "--structure", help="Structure source: image path or seed:N (repeatable)."),
    texture: List[str] = typer.Option(..., "--texture", help="Texture source: image path or seed:N (repeatable)."),
    out: Path = typer.Option(..., "--out", help="The grid PNG/JPEG to write."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    state = get_state(ctx)
    from coordgan_cli.inference import is_default_model, load_correspondence_model, resolve_model
    from coordgan_cli.io.images import write_image
    from coordgan_cli.io.paths import output_file
    from coordgan_cli.swapping import load_source, swap_grid

    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--out {out}: the grid must be a .png or .jpg file")
    output_file(out)  # before the model loads: a bad --out fails at once
    path = resolve_model(ckpt, model_name)
    if is_default_model(path):
        info(f"swap: the shipped model {path.stem!r} ({path}); give CKPT or --model to choose another", state)
    model = load_correspondence_model(path, state.torch_device(), allow_generator_only=True)
    structures = [load_source(model, s) for s in structure]
    textures = [load_source(model, t) for t in texture]
    grid = swap_grid(model, structures, textures)
    write_image(out, grid)
    if as_json:
        print_json({"out": str(out), "rows": structure, "columns": texture, "checkpoint": str(path),
                    "checkpoint_kind": model.kind, "height": int(grid.shape[0]), "width": int(grid.shape[1])})
    else:
        info(f"swap grid {len(structure)}×{len(texture)} → {out}", state)


def register(app: typer.Typer) -> None:
    app.command("swap", help=HELP)(swap_command)
