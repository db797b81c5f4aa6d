"""The root command: help, version, device selection, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from coordgan_cli import __version__
from coordgan_cli.cli import app
from coordgan_cli.device import resolve_device
from coordgan_cli.errors import UserError

runner = CliRunner()


def test_help_shows_root_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--device", "--seed", "--quiet", "--verbose", "--version"):
        assert option in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"coordgan {__version__}"


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "coordgan_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"coordgan {__version__}"


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("tpu", "cuda:99" if __import__("torch").cuda.is_available() else "cuda"):
        try:
            resolve_device(bad)
        except UserError as exc:
            assert "--device" in exc.message
        else:  # pragma: no cover - the assertion is the point
            raise AssertionError(f"{bad} should be rejected")


def test_user_error_is_one_line_and_exit_2():
    import typer

    probe = typer.Typer()

    # Reuse the real group class so the error path is the one every command takes.
    from coordgan_cli.cli._common import CoordganGroup

    probe = typer.Typer(cls=CoordganGroup)

    @probe.command()
    def fail() -> None:
        raise UserError("data/x.png: mask is 10x10 but its image is 12x12")

    @probe.command()
    def other() -> None:
        pass

    result = runner.invoke(probe, ["fail"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: data/x.png: mask is 10x10 but its image is 12x12"
    assert "Traceback" not in result.output
