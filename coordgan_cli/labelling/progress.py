"""Resume records of a labelling run (``OUT/progress.jsonl``) and the COCO files streamed from them.

The first line holds the key of the run's settings (references, matcher, options); each finished
query appends one durable line (its image entry, annotations, mean confidence). A rerun with the
same key skips recorded queries whose label PNG exists; another key is refused rather than mixed.
Only a few numbers per query stay in memory: full records are re-read by offset at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from coordgan_cli.errors import UserError

PROGRESS = "progress.jsonl"


def settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def light(rec: dict[str, Any], offset: int) -> dict[str, Any]:
    return {"offset": offset, "mean_confidence": rec["mean_confidence"], "low_fraction": rec["low_fraction"]}


def load_progress(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """name → {"offset": byte offset of its record line, "mean_confidence", "low_fraction"}."""
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    with open(path, "rb") as handle:
        first = True
        while True:
            offset = handle.tell()
            line = handle.readline()
            if not line:
                break
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                first = False
                continue  # a line torn by a killed run: that query is simply redone
            if first and "settings" in rec:
                if rec["settings"] != key:
                    raise UserError(f"{path}: this output folder was made with other references or settings; "
                                    "use a new --out folder (or delete progress.jsonl to start over)")
            elif "name" in rec:
                records[rec["name"]] = light(rec, offset)
            first = False
    return records


def append_record(handle: BinaryIO, record: dict[str, Any]) -> int:
    """Append one record line durably; returns its byte offset."""
    handle.seek(0, os.SEEK_END)
    offset = handle.tell()
    handle.write((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())
    return offset


def read_records(path: Path, offsets: list[int]) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            yield json.loads(handle.readline())


def write_coco_stream(path: Path, progress: Path, offsets: list[int], categories: list[dict[str, Any]],
                      key: str, description: str) -> None:
    """Write a COCO file from the per-query records without holding all annotations at once."""
    from coordgan_cli.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write('{"info": ' + json.dumps({"description": description, "version": "1.0"}) + ', "licenses": [], ')
        out.write('"images": [')
        for i, rec in enumerate(read_records(progress, offsets)):
            out.write(("," if i else "") + json.dumps(rec["image"], separators=(",", ":")))
        out.write('], "annotations": [')
        next_id = 1
        for rec in read_records(progress, offsets):
            for ann in rec.get(key, []):
                out.write(("" if next_id == 1 else ",") + json.dumps(dict(ann, id=next_id), separators=(",", ":")))
                next_id += 1
        out.write('], "categories": ' + json.dumps(categories) + "}\n")
