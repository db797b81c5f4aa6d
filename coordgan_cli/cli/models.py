"""``coordgan models``: the models this build ships (CoordGAN models and feature matchers)."""

from __future__ import annotations

import typer

from coordgan_cli.cli._common import get_state, info, print_json, warn

FIGURE_NAMES = {"miou_coordinates": "mIoU", "miou_correlation": "mIoU correlation",
                "miou_ensemble": "mIoU ensemble", "miou_identity": "identity"}


def _figure_text(figures: dict[str, float]) -> str:
    parts = []
    for key, value in figures.items():
        prefix, _, name = key.rpartition(":")
        label = FIGURE_NAMES.get(name, name.replace("pck@", "PCK@"))
        parts.append(f"{prefix + ' ' if prefix else ''}{label} {100 * value:.1f} %")
    return ", ".join(parts) or "—"


def models_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the shipped models with their kind, size, whether the file matches its recorded
    sha256, and the headline figures measured with them (mIoU, identity baseline, PCK)."""
    from coordgan_cli.inference import DEFAULT_MATCHER, DEFAULT_MODEL, shipped_dir
    from coordgan_cli.io.shipped import list_shipped

    state = get_state(ctx)
    folder = shipped_dir()
    records = list_shipped(folder, {DEFAULT_MODEL: "maps", DEFAULT_MATCHER: "matcher"})
    if as_json:
        print_json(records)
        return
    if not records:
        info(f"this build ships no models ({folder})", state)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"shipped models ({folder})")
    for column, justify in (("name", "left"), ("kind", "left"), ("default for", "left"), ("MiB", "right"),
                            ("sha256", "left"), ("recorded figures", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in records:
        check = {"ok": "[green]ok[/]", "mismatch": "[bold red]MISMATCH[/]"}.get(r["hash"], f"[yellow]{r['hash']}[/]")
        figures = _figure_text(r["figures"])
        if r["evaluated_on"]:
            figures += f" [dim]on {r['evaluated_on']}[/]"
        table.add_row(r["name"], r["kind"] or "?", r["default_for"] or "",
                      f"{r['size_mib']:.1f}" if r["size_mib"] is not None else "—", check, figures)
    Console(soft_wrap=False).print(table)
    for r in records:
        for problem in r["problems"]:
            warn(f"{r['name']}: {problem}")


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
