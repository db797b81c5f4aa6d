"""The run directory: everything a training run writes, all of it atomically.

    RUN/config.json           resolved recipe + run facts (seed, stage, frozen networks)
    RUN/config.toml           the same recipe as TOML, reusable as ``coordgan train RUN/config.toml``
    RUN/metrics.jsonl         one JSON object per logged step
    RUN/ckpt-NNNNNNN.pt       checkpoints (the last ``keep`` are kept)
    RUN/latest.pt             always the newest complete checkpoint (a hard link, else a copy)
    RUN/samples/step-NNNNNNN.png

A checkpoint file is complete or absent (temporary name + rename); ``latest.pt`` is replaced
only after the new checkpoint is complete, so a ``kill -9`` at any moment leaves a run that
resumes from the newest complete state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from coordgan_cli.config import Recipe
from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_path, atomic_write_json, atomic_write_text
from coordgan_cli.io.images import write_image

_CKPT = re.compile(r"^ckpt-(\d{7,})\.pt$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as a TOML file ``load_recipe`` reads back to the same Recipe."""
    data = recipe.to_dict()
    lines = [f"name = {_toml_value(data.pop('name'))}"]
    for section, table in data.items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


class RunDir:
    """A run directory (see the module doc). Creating it checks that it is writable."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- set-up -------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        from coordgan_cli.io.paths import output_folder

        output_folder(self.path)  # samples/ is made with the first sample

    def check_new_run(self) -> None:
        """Refuse to start a new run in a folder holding other files (an empty samples/ is fine)."""
        if self.path.exists() and any(p.name != "samples" for p in self.path.iterdir()) \
                and not (self.path / "config.json").is_file():
            raise UserError(f"{self.path}: exists, is not empty and holds no coordgan run; choose another --out")

    def write_config(self, recipe: Recipe, facts: dict[str, Any]) -> None:
        atomic_write_json(self.path / "config.json", {"recipe": recipe.to_dict(), **facts})
        atomic_write_text(self.path / "config.toml", recipe_to_toml(recipe))

    def read_facts(self) -> Optional[dict[str, Any]]:
        path = self.path / "config.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: unreadable run configuration ({exc})") from exc

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.path / f"ckpt-{step:07d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Numbered checkpoints, oldest first (numbers only order files; the step is read from the contents)."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := _CKPT.match(p.name))]
        return sorted(found)

    def newest_checkpoint(self) -> Optional[Path]:
        latest = self.path / "latest.pt"
        if latest.is_file():
            return latest
        found = self.checkpoints()
        return found[-1][1] if found else None

    def load_newest(self, map_location: Any = "cpu") -> dict[str, Any]:
        """Load ``newest_checkpoint()``. When ``latest.pt`` is unreadable, the error names the
        newest numbered checkpoint beside it that loads, and how to resume from it."""
        from coordgan_cli.io.checkpoint import load_checkpoint

        newest = self.newest_checkpoint()
        assert newest is not None, "load_newest needs a checkpoint"
        try:
            return load_checkpoint(newest, map_location=map_location)
        except UserError as exc:
            if newest.name != "latest.pt":
                raise
            for step, candidate in reversed(self.checkpoints()):
                try:
                    load_checkpoint(candidate, map_location="cpu")
                except UserError:
                    continue
                raise UserError(f"{exc.message}. The numbered checkpoint {candidate} (step {step}) beside it is "
                                f"intact: resume from it with `cp {candidate} {newest}` and rerun") from exc
            raise

    def remove_stale_temporaries(self) -> None:
        """Temporary files of a write a kill cut short (never complete; io.atomic names them)."""
        from coordgan_cli.io.paths import remove_stale_temporaries

        remove_stale_temporaries(self.path, ".pt")
        remove_stale_temporaries(self.path, ".json")
        remove_stale_temporaries(self.path, ".toml")
        remove_stale_temporaries(self.path, ".jsonl")
        remove_stale_temporaries(self.path / "samples", ".png")

    def commit_checkpoint(self, written: Path, keep: int) -> None:
        """Point latest.pt at a complete checkpoint file, then drop the oldest beyond ``keep``."""
        latest = self.path / "latest.pt"
        with atomic_path(latest) as tmp:
            tmp.unlink()
            try:
                os.link(written, tmp)
            except OSError:  # file systems without hard links
                shutil.copyfile(written, tmp)
        for _, old in self.checkpoints()[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    # -- metrics and samples ------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        # One short line per write, flushed: a kill leaves at most a partial last line, which
        # truncate_metrics() drops on resume.
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()

    def truncate_metrics(self, step: int) -> None:
        """Keep only complete lines with ``step`` <= the resumed step (later ones are redone)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))

    def write_sample(self, step: int, grid: np.ndarray) -> Path:
        path = self.path / "samples" / f"step-{step:07d}.png"
        write_image(path, grid)
        return path
