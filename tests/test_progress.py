"""Progress when stderr is not a terminal: plain lines, rate-limited, always the final one."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.cli._common import AppState, PlainProgress, make_progress

runner = CliRunner()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(progress: PlainProgress, capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_lines_every_ten_percent_with_rate_and_eta(capsys):
    clock = Clock()
    progress = PlainProgress(unit="img", clock=clock)
    with progress:
        task = progress.add_task("propagate", total=50, rate="")
        for _ in range(50):
            clock.now += 0.5
            progress.update(task, advance=1)
    lines = _lines(progress, capsys)
    assert len(lines) == 10  # 10 %, 20 %, … 100 %; the final line is not repeated at exit
    assert lines[0] == "[propagate] 5/50 img (10 %), 2.0 img/s, eta 22 s, elapsed 2 s"
    assert lines[-1] == "[propagate] 50/50 img (100 %), 2.0 img/s, elapsed 25 s"


def test_slow_work_shows_seconds_per_item_and_a_line_every_interval(capsys):
    clock = Clock()
    progress = PlainProgress(unit="step", clock=clock, every_s=10)
    task = progress.add_task("train", total=1000, completed=0, rate="", detail="")
    for step in range(1, 6):
        clock.now += 12.0  # 12 s per step: every update is due by time, none by fraction
        progress.update(task, completed=step, detail=f"loss {1 / step:.2f}")
    progress.stop()
    lines = _lines(progress, capsys)
    assert len(lines) == 5
    assert lines[0].startswith("[train] 1/1000 step (0 %), 12.0 s/step, eta 3.3 h")
    assert lines[-1].endswith("loss 0.20")


def test_unknown_total_and_resumed_start(capsys):
    clock = Clock()
    progress = PlainProgress(unit="img", clock=clock, every_s=10)
    task = progress.add_task("invert", total=None)
    for _ in range(3):
        clock.now += 1.0
        progress.update(task, advance=1)  # not due: 3 s < 10 s and no total
    assert _lines(progress, capsys) == []
    progress.stop()
    assert _lines(progress, capsys) == ["[invert] 3 img, 1.0 img/s, elapsed 3 s"]
    # A resumed task's rate counts only the work done in this run.
    progress = PlainProgress(unit="step", clock=clock)
    task = progress.add_task("train", total=10, completed=8)
    clock.now += 4.0
    progress.update(task, completed=10)
    progress.stop()
    assert _lines(progress, capsys) == ["[train] 10/10 step (100 %), 2.0 s/step, elapsed 4 s"]


def test_quiet_prints_nothing_and_a_pipe_gets_plain_lines(capsys):
    quiet = make_progress(AppState(quiet=True))
    task = quiet.add_task("x", total=2)
    quiet.update(task, advance=2)
    quiet.stop()
    assert capsys.readouterr().err == ""
    assert isinstance(make_progress(AppState()), PlainProgress)  # pytest's stderr is not a terminal


def test_commands_report_progress_in_a_pipe(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--category", "faces", "--count", "3", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\[synth faces\] 3/3 img \(100 %\), .*img/s", result.stderr, re.M), result.stderr


def test_training_reports_progress_lines_in_a_pipe(tmp_path):
    from tiny_checkpoints import TINY, make_images

    images = make_images(tmp_path / "images", 4, sub_every=0)[0].parent
    result = runner.invoke(app, ["--device", "cpu", "train", str(TINY), "--out", str(tmp_path / "run"),
                                 "--data", str(images)])
    assert result.exit_code == 0, result.output
    # Whole words, never a bar cut to "tr… 1…": the final line carries the count and the losses.
    assert re.search(r"^\[train\] 4/4 step \(100 %\), .*, D [0-9.]+ +G [0-9.]+", result.stderr, re.M), result.stderr
