"""The ``coordgan`` program: root options and command registration.

Every module in this package that is not private (no leading underscore) defines
``register(app)`` and adds its command(s); the root collects them at import. A command is only
registered when it really works.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

import typer

from coordgan_cli import __version__
from coordgan_cli.cli._common import AppState, CoordganGroup, check_device_spec

app = typer.Typer(
    name="coordgan",
    cls=CoordganGroup,
    help="Dense correspondence and label propagation with CoordGAN: annotate a folder from a few references.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coordgan {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N (auto = CUDA if present)."),
    seed: int = typer.Option(0, "--seed", help="One seed for Python, NumPy and torch."),
    quiet: bool = typer.Option(False, "--quiet", help="Hide progress bars and progress lines."),
    verbose: bool = typer.Option(False, "--verbose", help="Show full tracebacks and debug detail."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Root options shared by every command."""
    check_device_spec(device)
    ctx.obj = AppState(device=device, seed=seed, quiet=quiet, verbose=verbose)


def _register_commands() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{module.name}").register(app)


_register_commands()


def main() -> None:
    """Console-script entry point. SIGTERM ends the program like Ctrl-C does, so the atomic
    writers remove their temporary files on the way out."""
    import signal

    def _terminate(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    app()
