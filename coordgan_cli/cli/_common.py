"""Shared CLI plumbing: app state, Rich consoles, progress bars, error handling, JSON output."""

from __future__ import annotations

import json
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column
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


DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> None:
    """Refuse a --device that is not auto, cpu, cuda or cuda:N (without importing torch: every
    command checks it, also those that never use a device)."""
    if not DEVICE_SPEC.match(spec.strip().lower()):
        raise UserError(f"--device {spec!r} is not a device: use auto, cpu, cuda or cuda:N")


def _tidy_help(command: Any, ctx: Any) -> None:
    """Help rendering: a flag takes no value, so no ``<bool>``; a repeatable option shows its
    element type (``<path>...``, not ``<list[Path]>``)."""
    for param in command.get_params(ctx):
        if "display_type_rich" in vars(param) or not hasattr(param, "display_type_rich"):
            continue
        if getattr(param, "is_flag", False):
            param.display_type_rich = lambda ctx: None
        elif getattr(param, "multiple", False) or getattr(param, "nargs", 1) == -1:
            label = param.display_type_rich(ctx=None)  # e.g. <list[Path]>
            inner = re.sub(r"^<list\[(.*)\]>$", r"\1", label) if isinstance(label, str) else label
            if inner != label:
                shown = f"<{inner.lower() if inner == 'Path' else inner}>..."
                param.display_type_rich = lambda ctx, shown=shown: shown


class CoordganGroup(TyperGroup):
    """Turns a UserError raised anywhere in a command into one clear line and exit status 2.

    An OSError naming a file that escapes a command (a folder that vanished, a full disk, a
    permission the checks up front could not foresee) takes the same path: ``error: <file>: <why>``.
    ``--verbose`` adds the traceback."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _tidy_help(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy_help(self, ctx)
        super().format_help(ctx, formatter)

    def invoke(self, ctx: Any) -> Any:
        from coordgan_cli.io.paths import os_error_message

        try:
            return super().invoke(ctx)
        except UserError as exc:
            self._fail(ctx, exc.message, exc.exit_code, exc)
        except OSError as exc:
            if exc.filename is None and exc.errno is None:
                raise  # not about a file: a bug, keep its traceback
            self._fail(ctx, os_error_message(exc), 2, exc)

    @staticmethod
    def _fail(ctx: Any, message: str, code: int, exc: BaseException) -> None:
        state = ctx.obj if isinstance(ctx.obj, AppState) else None
        if state is not None and state.verbose:
            traceback.print_exc(file=sys.stderr)
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        raise typer.Exit(code=code) from exc


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


def stderr_is_terminal() -> bool:
    return err_console.is_terminal


def make_progress(state: Optional[AppState] = None, *, unit: str = "it"):
    """Progress on stderr, with Rich's ``Progress`` interface (``add_task``, ``update``, ``start``,
    ``stop``, context manager).

    On a terminal: a Rich bar (description, bar, n/total, %, rate, elapsed, ETA). Otherwise (a
    pipe, a log file): plain lines such as ``[propagate] 42/50 img (84 %), 3.1 s/img, eta 25 s``,
    at most one per task every PLAIN_EVERY_S seconds or 10 % of the total, and always the final
    one, so a long job in a pipe shows it is alive. Hidden with --quiet.
    """
    quiet = bool(state and state.quiet)
    if quiet or not stderr_is_terminal():
        return PlainProgress(unit=unit, enabled=not quiet)
    return Progress(
        # The description and the count never shrink; only the free-text rate column is cut
        # when the terminal is narrow.
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=13)),
        BarColumn(bar_width=20),
        MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=11, justify="right")),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}", table_column=Column(overflow="ellipsis", no_wrap=True, ratio=1)),
        console=err_console,
        transient=False,
        expand=True,  # the rate column takes what is left (and is cut with … when that is short)
    )


PLAIN_EVERY_S = 10.0


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _PlainTask:
    description: str
    total: Optional[float]
    completed: float
    fields: dict
    start: float
    start_completed: float
    printed_at: float
    printed_completed: Optional[float] = None
    next_fraction: float = 0.1


class PlainProgress:
    """Rich's ``Progress`` interface, writing plain periodic lines to stderr (see ``make_progress``)."""

    def __init__(self, *, unit: str = "it", enabled: bool = True, every_s: Optional[float] = None,
                 clock=None) -> None:
        import time

        self.unit = unit
        self.enabled = enabled
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self._clock = clock or time.monotonic
        self._tasks: dict[int, _PlainTask] = {}

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def add_task(self, description: str, total: Optional[float] = 100.0, completed: float = 0, **fields: Any) -> int:
        now = self._clock()
        task_id = len(self._tasks)
        self._tasks[task_id] = _PlainTask(description, total, completed, dict(fields), now, completed, now)
        return task_id

    def update(self, task_id: int, *, total: Optional[float] = None, completed: Optional[float] = None,
               advance: Optional[float] = None, description: Optional[str] = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        task.fields.update(fields)
        now = self._clock()
        due = now - task.printed_at >= self.every_s
        if task.total:
            fraction = task.completed / task.total
            if fraction >= task.next_fraction:
                due = True
                task.next_fraction = (int(fraction * 10 + 1e-9) + 1) / 10
        if due and task.completed != task.printed_completed:
            self._print(task, now)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def stop(self) -> None:
        now = self._clock()
        for task in self._tasks.values():
            if task.completed != task.printed_completed:
                self._print(task, now)

    def line(self, task: _PlainTask, now: float) -> str:
        """``[description] n/total unit (p %), rate, eta T[, detail]``."""
        done = task.completed
        count = f"{done:g}/{task.total:g}" if task.total else f"{done:g}"
        parts = [f"[{task.description}] {count} {self.unit}"
                 + (f" ({100 * done / task.total:.0f} %)" if task.total else "")]
        elapsed = now - task.start
        rate = (done - task.start_completed) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{1 / rate:.1f} s/{self.unit}" if rate < 1 else f"{rate:.1f} {self.unit}/s")
            if task.total and done < task.total:
                parts.append(f"eta {_duration((task.total - done) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        detail = task.fields.get("detail")
        if detail:
            parts.append(str(detail))
        return ", ".join(parts)

    def _print(self, task: _PlainTask, now: float) -> None:
        task.printed_at, task.printed_completed = now, task.completed
        if self.enabled:
            err_console.print(escape(self.line(task, now)), soft_wrap=True, highlight=False)


def track(items: Iterable[T], total: Optional[int], description: str, state: Optional[AppState] = None,
          unit: str = "it") -> Iterator[T]:
    """Iterate with progress (a bar on a terminal, periodic lines in a pipe) showing the rate."""
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
