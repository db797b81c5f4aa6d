"""Shared CLI plumbing: app state, Rich consoles, progress bars, error handling, JSON output."""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from coordgan_cli.errors import UserError

T = TypeVar("T")

# Diagnostics go to stderr; stdout is kept for machine-readable output (--json).
# The console resolves sys.stderr at print time, so tests capturing stderr see it.
err_console = Console(stderr=True, highlight=False)


@dataclass
class AppState:
    """Root options, stored on the Click context."""

    device: str = "auto"
    seed: int = 0
    quiet: bool = False
    verbose: bool = False

    def torch_device(self):
        from coordgan_cli.device import resolve_device

        return resolve_device(self.device)


def get_state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, AppState) else AppState()


class CoordganGroup(TyperGroup):
    """Turns a UserError raised anywhere in a command into one clear line and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            state = ctx.obj if isinstance(ctx.obj, AppState) else None
            if state is not None and state.verbose:
                traceback.print_exc(file=sys.stderr)
            err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from exc


def info(message: str, state: Optional[AppState] = None) -> None:
    """A diagnostic line on stderr (hidden with --quiet)."""
    if state is None or not state.quiet:
        err_console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def print_json(obj: Any) -> None:
    """One JSON object on stdout, nothing else."""
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def make_progress(state: Optional[AppState] = None, *, unit: str = "it") -> Progress:
    """A Rich progress bar on stderr: description, bar, n/total, rate, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=bool(state and state.quiet),
        transient=False,
    )


def track(items: Iterable[T], total: Optional[int], description: str, state: Optional[AppState] = None,
          unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar showing items/s."""
    import time

    with make_progress(state, unit=unit) as progress:
        task = progress.add_task(description, total=total, rate="")
        start = time.perf_counter()
        done = 0
        for item in items:
            yield item
            done += 1
            elapsed = max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=1, rate=f"{done / elapsed:.1f} {unit}/s")
