"""What the shipped folder holds: each model's file checked against its sidecar JSON.

A shipped model is ``<shipped dir>/<name>.pt`` with ``<name>.json`` beside it (written by
``scripts/ship_model.py``): ``sha256`` of the file, optionally
``name``, ``kind``, ``file_bytes``, ``recipe``, ``training`` and ``evaluation`` (a ``coordgan
evaluate --json`` object). :func:`list_shipped` never raises for a damaged entry: a missing or
unreadable sidecar, a missing file or a hash mismatch is reported in the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import file_sha256, load_checkpoint


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _miou(entry: Any) -> Optional[float]:
    return _number(entry.get("miou")) if isinstance(entry, dict) else None


def headline_figures(evaluation: Any, kind: Optional[str]) -> dict[str, float]:
    """The headline numbers of a ``coordgan evaluate --json`` object, as fractions.

    Keys: ``miou_<matcher>`` for each matcher scored (for a matcher model only its own
    correlation / ensemble figures: its ``coordinates`` row comes from the maps it was evaluated
    with, not from the matcher), ``miou_identity`` (the reference mask copied unchanged) and
    ``pck@<threshold>`` (maps only). A dict of such objects (one per dataset) gives
    ``<dataset>:<key>`` entries. Unrecognised content gives {}.
    """
    if not isinstance(evaluation, dict):
        return {}
    figures: dict[str, float] = {}
    matchers = evaluation.get("matchers") if isinstance(evaluation.get("matchers"), dict) else {}
    wanted = ("correlation", "ensemble") if kind == "matcher" else ("coordinates", "correlation", "ensemble")
    for name in wanted:
        value = _miou(matchers.get(name))
        if value is not None:
            figures[f"miou_{name}"] = value
    if not matchers and kind != "matcher" and _number(evaluation.get("miou")) is not None:
        figures["miou_coordinates"] = float(evaluation["miou"])
    baselines = evaluation.get("baselines") if isinstance(evaluation.get("baselines"), dict) else {}
    identity = _miou(baselines.get("identity"))
    if identity is None:
        identity = _number(evaluation.get("miou_identity"))
    if identity is not None:
        figures["miou_identity"] = identity
    if kind != "matcher" and isinstance(evaluation.get("pck"), dict):
        for threshold, value in evaluation["pck"].items():
            if _number(value) is not None:
                figures[f"pck@{threshold}"] = float(value)
    if figures:
        return figures
    # One level down: {dataset: evaluate-json, ...}.
    for key, value in evaluation.items():
        if isinstance(value, dict):
            for name, number in headline_figures(value, kind).items():
                figures[f"{key}:{name}"] = number
    return figures


def _evaluated_on(evaluation: Any) -> Optional[str]:
    if not isinstance(evaluation, dict) or "dataset" not in evaluation:
        return None
    protocol = evaluation.get("protocol")
    return f"{evaluation['dataset']}" + (f" ({protocol} protocol)" if protocol else "")


def _checkpoint_kind(path: Path) -> Optional[str]:
    try:
        return str(load_checkpoint(path).get("kind"))
    except UserError:
        return None


def describe_shipped(folder: Path, stem: str, defaults: dict[str, str]) -> dict[str, Any]:
    """One record: name, kind, file, size, sha256 check, headline figures and problems found.

    ``defaults``: shipped name → what it is the default for ("maps", "matcher").
    ``hash`` is "ok", "mismatch", "not recorded" (sidecar without sha256), "no sidecar" or
    "file missing".
    """
    problems: list[str] = []
    sidecar_path = folder / f"{stem}.json"
    sidecar: dict[str, Any] = {}
    if sidecar_path.is_file():
        try:
            loaded = json.loads(sidecar_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                sidecar = loaded
            else:
                problems.append(f"{sidecar_path.name}: not a JSON object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{sidecar_path.name}: unreadable ({exc})")
    else:
        problems.append(f"no sidecar {sidecar_path.name}")
    file_name = sidecar.get("file") if isinstance(sidecar.get("file"), str) else f"{stem}.pt"
    path = folder / file_name
    recorded = sidecar.get("sha256") if isinstance(sidecar.get("sha256"), str) else None
    record: dict[str, Any] = {
        "name": sidecar.get("name") if isinstance(sidecar.get("name"), str) else stem,
        "kind": sidecar.get("kind") if isinstance(sidecar.get("kind"), str) else None,
        "default_for": defaults.get(stem),
        "file": str(path), "size_bytes": None, "size_mib": None,
        "sha256": None, "sha256_recorded": recorded, "hash": None,
        "step": sidecar.get("step"), "recipe": sidecar.get("recipe"), "evaluated_on": _evaluated_on(sidecar.get("evaluation")),
        "figures": {}, "problems": problems,
    }
    if not path.is_file():
        record["hash"] = "file missing"
        problems.append(f"{file_name} is missing")
    else:
        size = path.stat().st_size
        record["size_bytes"] = size
        record["size_mib"] = round(size / 2**20, 2)
        record["sha256"] = file_sha256(path)
        if not sidecar_path.is_file() or not sidecar:
            record["hash"] = "no sidecar"
        elif recorded is None:
            record["hash"] = "not recorded"
            problems.append(f"{sidecar_path.name} records no sha256")
        elif recorded == record["sha256"]:
            record["hash"] = "ok"
        else:
            record["hash"] = "mismatch"
            problems.append(f"{file_name}: sha256 {record['sha256'][:12]}… differs from the recorded "
                            f"{recorded[:12]}… (damaged or replaced file)")
        recorded_bytes = sidecar.get("file_bytes")
        if isinstance(recorded_bytes, int) and recorded_bytes != size:
            problems.append(f"{file_name}: {size} bytes, the sidecar records {recorded_bytes}")
        if record["kind"] is None:
            record["kind"] = _checkpoint_kind(path) or "unreadable"
    record["figures"] = headline_figures(sidecar.get("evaluation"), record["kind"])
    return record


def list_shipped(folder: Path, defaults: dict[str, str]) -> list[dict[str, Any]]:
    """Records (:func:`describe_shipped`) of every ``*.pt`` and every sidecar ``*.json`` in ``folder``, by name."""
    if not folder.is_dir():
        return []
    stems = {p.stem for p in folder.glob("*.pt")} | {p.stem for p in folder.glob("*.json")}
    return [describe_shipped(folder, stem, defaults) for stem in sorted(stems)]
