"""``coordgan info TARGET``: what a recipe resolves to, or what a checkpoint holds, with parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from coordgan_cli.cli._common import get_state, print_json
from coordgan_cli.errors import UserError


def _config_table(recipe: Any) -> Table:
    from coordgan_cli.config import describe

    table = Table(title=f"recipe {recipe.name}", show_lines=False)
    table.add_column("section")
    table.add_column("key")
    table.add_column("value")
    table.add_column("meaning", style="dim")
    last = None
    for section, key, value, doc in describe(recipe):
        table.add_row(section if section != last else "", key, repr(value) if isinstance(value, str) else str(value), doc)
        last = section
    return table


def _parameter_table(counts: dict[str, int]) -> Table:
    table = Table(title="parameters")
    table.add_column("network")
    table.add_column("parameters", justify="right")
    table.add_column("millions", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}", f"{count / 1e6:.2f} M")
    return table


def _state_elements(state: Any) -> int:
    return sum(v.numel() for v in state.values() if hasattr(v, "numel")) if isinstance(state, dict) else 0


def _health(data: dict[str, Any], recipe: Any, path: Path, state: Any) -> dict[str, Any]:
    """The training-health probe (``training.health``) on a checkpoint's (EMA) generator."""
    import torch

    from coordgan_cli.inference import build_generator, generator_state
    from coordgan_cli.training.health import HEALTH_CODES, health_codes, measure_health

    device = state.torch_device()
    weights = "ema" if "generator" in (data.get("ema") or {}) else "generator"
    generator = build_generator(recipe, generator_state(data, path), path, device)
    z_s, z_t = health_codes(generator.latent_dim, state.seed, device=device)
    with torch.no_grad():
        values = measure_health(generator, z_s, z_t)
    out = {**values, "inverted": values["layout_ratio"] < 1.0, "weights": weights, "codes": HEALTH_CODES,
           "seed": state.seed}
    if "encoder" in data["networks"]:
        from coordgan_cli.inference import build_encoder
        from coordgan_cli.training.health import ENCODER_HEALTH_CODES, measure_encoder_health

        encoder = build_encoder(recipe, data["networks"]["encoder"], path, device)
        z_s, z_t = health_codes(generator.latent_dim, state.seed, n=ENCODER_HEALTH_CODES, device=device)
        out["encoder"] = {**measure_encoder_health(encoder, generator, z_s, z_t), "codes": ENCODER_HEALTH_CODES}
    return out


def _health_lines(health: dict[str, Any]) -> list[str]:
    verdict = ("INVERTED: texture swaps move the layout more than structure swaps" if health["inverted"]
               else "structure swaps move the layout more than texture swaps")
    return [
        f"[bold]training health[/] ({'EMA' if health['weights'] == 'ema' else 'stored'} generator weights, "
        f"{health['codes']} fixed codes, seed {health['seed']})",
        f"  map displacement across structure codes: {health['map_displacement_px']:.2f} px of the map grid",
        f"  layout change: structure swap {health['layout_structure']:.3f}, texture swap "
        f"{health['layout_texture']:.3f}; ratio {health['layout_ratio']:.2f} ({verdict})",
        f"  image follows a shifted map: {health['map_follow']:.2f} (1 = fully, 0 = not at all)",
    ] + ([
        f"[bold]encoder health[/] (its generator's own images, {health['encoder']['codes']} fixed codes)",
        f"  recovered maps are {health['encoder']['encoder_map_error_px']:.2f} px off the true ones; one mean map for "
        f"all would be {health['encoder']['mean_map_error_px']:.2f} px off: recovery "
        f"{health['encoder']['encoder_recovery']:.2f} (1 = exact, 0 = ignores the image)",
        "  (labels on photos also need photos like the generator's images: check them with `coordgan evaluate`)",
    ] if "encoder" in health else [])


def info_command(
    ctx: typer.Context,
    target: Path = typer.Argument(..., help="A recipe (.toml) or a checkpoint (.pt)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout: config, parameters (and checkpoint)."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe value: section.key=value (repeatable)."),
    health: bool = typer.Option(False, "--health", help="Checkpoints: probe the generator's training health (map "
                                "displacement, layout ratio, map following) on a small fixed batch; on an "
                                "encoder checkpoint also how well the encoder recovers its generator's maps."),
) -> None:
    """Print a recipe's resolved config (or a checkpoint's contents) and parameter counts per network."""
    from coordgan_cli.config import load_recipe
    from coordgan_cli.models import parameter_counts

    # info reads on the CPU whatever --device says (only the --health probe runs on it), but a
    # --device that cannot be used here is refused as everywhere else rather than ignored.
    state = get_state(ctx)
    state.torch_device()
    overrides = list(overrides or [])
    checkpoint: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    if not target.exists():
        raise UserError(f"{target}: no such file (expected a recipe .toml or a checkpoint .pt)")
    if target.suffix.lower() == ".toml":
        if health:
            raise UserError(f"{target}: --health probes a trained generator; give a checkpoint (.pt), not a recipe")
        recipe = load_recipe(target, overrides)
    else:
        if overrides:
            raise UserError("--set applies to recipes; a checkpoint's config is fixed (it describes its weights)")
        from coordgan_cli.io.checkpoint import checkpoint_recipe, file_sha256, load_checkpoint

        data = load_checkpoint(target)
        recipe = checkpoint_recipe(data, target)
        checkpoint = {
            "path": str(target),
            "format": data["format"],
            "format_version": data["format_version"],
            "kind": data["kind"],
            "step": int(data["step"]),
            "sha256": file_sha256(target),
            "networks": {name: _state_elements(s) for name, s in data["networks"].items()},
            "ema": sorted(data.get("ema", {}) or {}),
            "optimizers": sorted(data.get("optimizers", {}) or {}),
            "rng": "rng" in data,
        }
        if health:
            probe = _health(data, recipe, target, state)
    counts = parameter_counts(recipe.model)
    if as_json:
        out: dict[str, Any] = {"config": recipe.to_dict(), "parameters": counts}
        if checkpoint is not None:
            out["checkpoint"] = checkpoint
        if probe is not None:
            out["health"] = probe
        print_json(out)
        return
    console = Console(highlight=False)
    if checkpoint is not None:
        console.print(f"[bold]checkpoint[/] {checkpoint['path']}")
        console.print(f"  format {checkpoint['format']} v{checkpoint['format_version']}, kind {checkpoint['kind']}, "
                      f"step {checkpoint['step']:,}")
        console.print(f"  sha256 {checkpoint['sha256']}")
        stored = ", ".join(f"{k} ({v:,} values)" for k, v in checkpoint["networks"].items())
        console.print(f"  networks: {stored or 'none'}")
        console.print(f"  EMA: {', '.join(checkpoint['ema']) or 'none'}; optimisers: "
                      f"{', '.join(checkpoint['optimizers']) or 'none'}; RNG state: {'yes' if checkpoint['rng'] else 'no'}")
    if probe is not None:
        for line in _health_lines(probe):
            console.print(line)
    console.print(_config_table(recipe))
    console.print(_parameter_table(counts))


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
