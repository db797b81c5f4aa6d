"""The one error path for files the user names: outputs checked before work starts, operating-system
errors turned into one line naming the file, and outputs a failed run created removed again.

Every command writes through these helpers (and ``io.atomic``, which uses them), so "cannot write
OUT" reads the same everywhere: ``<path>: cannot write here: <why>``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from coordgan_cli.errors import UserError


def os_error_text(exc: OSError) -> str:
    """The operating system's reason in words (``Permission denied``, ``Not a directory``, …)."""
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def os_error_message(exc: OSError, path: Optional[os.PathLike | str] = None) -> str:
    """``<file>: <reason>`` for an OSError (the file from the error itself when it names one)."""
    name = exc.filename if exc.filename is not None else path
    reason = os_error_text(exc)
    if exc.filename2 is not None:
        reason += f" (→ {exc.filename2})"
    return f"{name}: {reason}" if name is not None else reason


def _blocking_ancestor(path: Path) -> Optional[Path]:
    """The nearest existing ancestor of ``path`` (itself excluded) when it is not a folder."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def unwritable(path: Path, exc: OSError) -> UserError:
    """The UserError for ``path`` that could not be created or written (``exc`` says why)."""
    blocker = _blocking_ancestor(path)
    if blocker is not None:
        why = f"{blocker} is a file, not a folder"
    elif exc.errno == errno.EEXIST and path.exists() and not path.is_dir():
        why = "a file of that name exists where a folder is needed"
    else:
        why = os_error_text(exc)
        where = str(exc.filename) if exc.filename is not None else str(path)
        if not (where + "/").startswith(str(path) + "/") and not (str(path) + "/").startswith(where + "/"):
            why += f" ({where})"  # the failure was elsewhere (not the path, its probe or its parents)
    return UserError(f"{path}: cannot write here: {why}")


def output_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` (and its parents) if needed and check a file can be made in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file; an output folder is needed here")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unwritable(path, exc) from exc
    return path


def output_file(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be written: not a folder, and its folder exists or can be made and
    takes new files. Creates the missing parent folders (they are where the output goes)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{path}: cannot write here: {parent} is a file, not a folder")
    try:
        output_folder(parent)
    except UserError as exc:
        raise UserError(f"{path}: " + exc.message.removeprefix(f"{parent}: ")) from exc
    return path


def first_missing(path: str | os.PathLike) -> Optional[Path]:
    """The outermost ancestor of ``path`` (or ``path`` itself) that does not exist yet: what
    writing ``path`` creates. None when ``path`` exists."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return None
    missing = path
    for parent in path.parents:
        if parent.exists() or str(parent) in ("", "."):
            break
        missing = parent
    return missing


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike, finished: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """If the body fails, remove what it created for ``path`` (the file or folder and any parent
    folders made for it), unless ``finished()`` says some of the work there is complete (a
    checkpoint, a stored row) and worth resuming. What existed before is never touched."""
    created = first_missing(path)
    try:
        yield
    except BaseException:
        if created is not None and created.exists():
            keep = True
            with contextlib.suppress(Exception):
                keep = finished()
            if not keep:
                with contextlib.suppress(OSError):
                    if created.is_dir() and not created.is_symlink():
                        shutil.rmtree(created)
                    else:
                        created.unlink()
        raise


def remove_stale_temporaries(folder: str | os.PathLike, suffix: str = ".pt") -> list[Path]:
    """Delete temporary files an earlier, killed run left in ``folder`` (``io.atomic`` names them
    ``.<name>.<random>.tmp<suffix>``); returns what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for stale in folder.glob(f".*.tmp{suffix}"):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed.append(stale)
    return removed
