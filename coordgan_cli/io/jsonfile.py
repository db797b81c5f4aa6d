"""Reading a user's JSON file with one clear message for each way it can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coordgan_cli.errors import UserError


def read_json(path: str | Path, what: str) -> Any:
    """Parse ``path``; ``what`` names the file's role in messages ("labels file", "COCO file")."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: {what} not found") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path}: is a folder, expected a {what}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON {what} ({exc})") from exc
