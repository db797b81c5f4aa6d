"""Reading what ``coordgan suggest`` chooses around: path lists, and a finished ``coordgan propagate``
output folder (its per-image confidence in ``progress.jsonl``, its ``run.json`` record, the
references its ``report.html`` names).

Every problem with these files is a ``UserError`` naming the file and what to do.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Optional

from coordgan_cli.errors import UserError
from coordgan_cli.labelling.progress import PROGRESS  # the run records `coordgan propagate` writes


def read_list(path: Path, what: str) -> list[str]:
    """Lines of a path list (first whitespace/comma-separated field; '#' comments, blanks skipped).

    Accepts ``suggested.txt``, a plain path list, or propagate's --refs pairs file ('image mask')."""
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} must be a UTF-8 text file of image paths") from exc
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line.replace(",", " ").replace("\t", " ").split(" ")[0])
    return entries


def locate(entries: list[str], base: Optional[Path], root: Optional[Path], names: dict[str, int],
           resolved: dict[Path, int], where: str) -> tuple[list[int], list[Path]]:
    """Entries → (indices of images in the folder, existing files outside it).

    An entry is a path (absolute, or relative to ``base``), or a name relative to the image folder
    (``names``: name → index; ``resolved``: resolved path → index). ``where`` names the list in errors.
    """
    inside: list[int] = []
    outside: list[Path] = []
    for entry in entries:
        candidates = [Path(entry)] if Path(entry).is_absolute() else \
            [p for p in ((base / entry) if base else None, (root / entry) if root else None) if p is not None]
        index = next((resolved[c.resolve()] for c in candidates if c.resolve() in resolved), None)
        if index is None:
            index = names.get(entry)
        if index is not None:
            inside.append(index)
            continue
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            hint = "; pass the run's --refs file" if where.endswith("report.html") else ""
            raise UserError(f"{where}: {entry!r} is neither an image of the folder nor an existing file{hint}")
        outside.append(found)
    return sorted(set(inside)), list(dict.fromkeys(outside))


def read_run(out: Path) -> dict[str, dict[str, float]]:
    """name → {"mean_confidence", "low_fraction"} from a propagate output folder's progress.jsonl."""
    path = out / PROGRESS
    if not out.is_dir():
        raise UserError(f"{out}: --from-run folder not found")
    if not path.is_file():
        raise UserError(f"{out}: no {PROGRESS} — not a `coordgan propagate` output folder (or it never started)")
    records: dict[str, dict[str, float]] = {}
    with open(path, "rb") as handle:
        for line in handle:
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a line torn by a killed run
            if isinstance(rec, dict) and "name" in rec and "mean_confidence" in rec:
                records[rec["name"]] = {"mean_confidence": float(rec["mean_confidence"]),
                                        "low_fraction": float(rec.get("low_fraction", float("nan")))}
    if not records:
        raise UserError(f"{path}: no labelled image recorded yet; let `coordgan propagate` finish first")
    return records


def read_run_json(out: Path) -> Optional[dict[str, Any]]:
    """A propagate run's ``OUT/run.json`` (``labelling.propagator.run_record``); None when the run
    predates it. A damaged one is a UserError naming it."""
    from coordgan_cli.labelling.propagator import RUN_FORMAT, RUN_JSON

    path = out / RUN_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a propagate run record ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise UserError(f"{path}: not a propagate run record (format is not {RUN_FORMAT!r})")
    queries = record.get("queries")
    if not isinstance(queries, dict) or not (isinstance(queries.get("source"), str)
                                             or isinstance(queries.get("paths"), list)):
        raise UserError(f"{path}: the run record names no queries")
    return record


def report_references(out: Path) -> list[str]:
    """Reference names from a propagate run's report.html summary line ('references: a, b'); [] if absent."""
    report = out / "report.html"
    if not report.is_file():
        return []
    text = report.read_text(encoding="utf-8", errors="replace")
    meta = re.search(r'<div class="meta">(.*?)</div>', text, re.S)
    if meta is None:
        return []
    for part in meta.group(1).split(" · "):
        key, _, value = html.unescape(part).partition(": ")
        if key == "references" and value:
            return [v.strip() for v in value.split(", ") if v.strip()]
    return []


def run_references(out: Path, record: Optional[dict[str, Any]],
                   refs: Optional[Path]) -> tuple[list[str], Optional[Path], str]:
    """The references of the run in ``out``: (entries, the folder relative entries are under, where
    they were read — for errors). ``refs`` (a --refs file) first, then ``record`` (its run.json),
    then the names its report.html shows."""
    recorded = [r["image"] for r in (record or {}).get("references", []) if isinstance(r, dict) and r.get("image")]
    if refs is not None:
        return read_list(refs, "--refs"), refs.parent, str(refs)
    if recorded:
        return recorded, None, str(out / "run.json")
    entries = report_references(out)
    if not entries:
        raise UserError(f"{out}: no report.html naming the references; pass the run's --refs file")
    return entries, None, str(out / "report.html")
