"""The one checkpoint format (DESIGN §5): a plain dict saved with ``torch.save``.

Layout (format ``coordgan.checkpoint``, version 1)::

    {
      "format": "coordgan.checkpoint", "format_version": 1,
      "kind": "generator" | "encoder" | "matcher",     # which training stage wrote it
      "step": int,                                     # from the contents, never the file name
      "config": str,                                   # Recipe.to_json() of the resolved recipe
      "networks": {name: state_dict},                  # e.g. generator, discriminator, patch_discriminator
      "ema": {name: state_dict},                       # optional: EMA copies (e.g. generator)
      "optimizers": {name: optimizer.state_dict()},    # optional
      "rng": capture_rng_state(),                      # optional
      "extra": {...},                                  # optional: plain data only
    }

Only tensors, numbers, strings, booleans, None, lists, tuples and dicts are allowed, so every
file loads with ``torch.load(weights_only=True)``: loading a checkpoint never runs code. Files are
written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_path

FORMAT = "coordgan.checkpoint"
FORMAT_VERSION = 1
KINDS = ("generator", "encoder", "matcher")

_PLAIN = (int, float, str, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value that ``weights_only=True`` loading would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where}: key {key!r} is a {type(key).__name__}, not str/int")
            _check_plain(value, f"{where}.{key}")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where}: {type(obj).__name__} is not plain data (tensors, numbers, strings, lists, dicts)")


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (see the module doc; needs kind, step, config, networks) atomically to ``path``."""
    missing = [k for k in ("kind", "step", "config", "networks") if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {', '.join(missing)}")
    if payload["kind"] not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {payload['kind']!r}")
    if not isinstance(payload["config"], str):
        raise ValueError("checkpoint config must be JSON text (Recipe.to_json())")
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    data["step"] = int(data["step"])
    _check_plain(data, "payload")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint (``weights_only=True``). Every problem is a UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected a coordgan checkpoint .pt)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage bytes can fail anywhere inside the unpickler
        # A pickle naming classes (code) is refused by the weights-only unpickler with "Unsupported
        # global"; random or truncated bytes fail on some other opcode, or earlier.
        if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
            raise UserError(f"{path}: holds objects other than plain tensors and data; not a coordgan checkpoint "
                            "(refusing to run code from it)") from exc
        size = path.stat().st_size
        what = "an empty, 0-byte file" if size == 0 else f"{size} bytes; truncated, damaged or another kind of file"
        raise UserError(f"{path}: not a readable torch checkpoint ({what})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: not a coordgan checkpoint (format {found!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise UserError(f"{path}: checkpoint has no valid format_version")
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {version} is newer than this coordgan reads "
                        f"({FORMAT_VERSION}); upgrade coordgan")
    for key in ("kind", "step", "config", "networks"):
        if key not in data:
            raise UserError(f"{path}: checkpoint lacks {key!r} (damaged file?)")
    return data


def checkpoint_recipe(data: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>"):
    """The resolved Recipe stored in a loaded checkpoint."""
    from coordgan_cli.config import recipe_from_json

    return recipe_from_json(data["config"], source=f"{path} (stored config)")


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                      path: str | os.PathLike) -> None:
    """Load ``state`` into ``module``; a key or shape mismatch is one UserError summarising the difference."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[0]} (file vs model)")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise UserError(f"{path}: the {what} weights belong to another architecture: {'; '.join(parts)}. "
                        "Build the model from the checkpoint's own config (do not override model sizes).")
    module.load_state_dict(state, strict=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies the checkpoint behind a store or a result)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if present) generator states as weights_only-safe values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"kind": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (a CUDA state is restored only where CUDA is present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
