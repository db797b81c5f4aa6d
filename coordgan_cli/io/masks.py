"""Label maps (masks) and the ``labels.json`` file that names and colours their ids.

Masks hold one class id per pixel: 0 = background, 255 = ignore (VOC convention). They are read
from palette PNGs, greyscale id PNGs or ``.npy`` arrays and written as palette PNGs whose palette
comes from the labels file, so any image viewer shows them in colour and any tool reads the ids.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_path, atomic_write_json
from coordgan_cli.io.jsonfile import read_json

IGNORE = 255
LABELS_FORMAT = "coordgan.labels"


@dataclass(frozen=True)
class LabelSet:
    """Class ids → names and RGB colours. Id 0 is background; 255 is reserved for ignore."""

    names: Mapping[int, str]
    colours: Mapping[int, tuple[int, int, int]]

    def __post_init__(self) -> None:
        for i in self.names:
            if not 0 <= i < IGNORE:
                raise UserError(f"label id {i} is out of range: ids must be 0..254 (255 means ignore)")

    @property
    def ids(self) -> list[int]:
        return sorted(self.names)

    @property
    def num_classes(self) -> int:
        """max id + 1: the length of a one-hot vector over these labels."""
        return max(self.names) + 1 if self.names else 1

    def name(self, i: int) -> str:
        return self.names.get(i, f"class {i}")

    def palette(self) -> list[int]:
        """A 768-entry PIL palette: each id's colour; 255 (ignore) white; unused ids grey-ish."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        for i in range(256):
            pal[i] = _auto_colour(i)
        for i, c in self.colours.items():
            pal[i] = c
        pal[0] = self.colours.get(0, (0, 0, 0))
        pal[IGNORE] = (255, 255, 255)
        return pal.reshape(-1).tolist()

    def colour_array(self) -> np.ndarray:
        """(256, 3) uint8 lookup table id → colour."""
        return np.asarray(self.palette(), dtype=np.uint8).reshape(256, 3)

    def to_json(self) -> dict:
        return {
            "format": LABELS_FORMAT,
            "version": 1,
            "labels": [
                {"id": i, "name": self.names[i], "colour": list(self.colours.get(i, _auto_colour(i)))} for i in self.ids
            ],
        }


def _auto_colour(i: int) -> tuple[int, int, int]:
    if i == 0:
        return (0, 0, 0)
    # Golden-ratio hue steps give distinct, stable colours for any id.
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def default_labels(num_classes: int) -> LabelSet:
    """Background + 'class 1' … 'class N-1' with automatic colours."""
    names = {0: "background", **{i: f"class {i}" for i in range(1, num_classes)}}
    return LabelSet(names=names, colours={i: _auto_colour(i) for i in names})


def labels_from_names(names: list[str]) -> LabelSet:
    """Ids 0..len-1 in order (names[0] is the background)."""
    mapping = dict(enumerate(names))
    return LabelSet(names=mapping, colours={i: _auto_colour(i) for i in mapping})


def read_labels(path: str | Path) -> LabelSet:
    """Read ``labels.json``: {"labels": [{"id", "name", "colour"}]} (also a plain {id: name} map)."""
    path = Path(path)
    data = read_json(path, "labels file")
    names: dict[int, str] = {}
    colours: dict[int, tuple[int, int, int]] = {}
    try:
        if isinstance(data, dict) and "labels" in data:
            for entry in data["labels"]:
                i = int(entry["id"])
                names[i] = str(entry["name"])
                if "colour" in entry or "color" in entry:
                    c = entry.get("colour", entry.get("color"))
                    if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
                        raise ValueError(f"colour of id {i} must be three numbers 0..255, got {c!r}")
                    colours[i] = tuple(int(v) for v in c)  # type: ignore[assignment]
        elif isinstance(data, dict):
            names = {int(k): str(v) for k, v in data.items()}
        else:
            raise ValueError("expected an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: malformed labels file ({exc})") from exc
    if len(set(names)) != len(names):
        raise UserError(f"{path}: duplicate label ids")
    names.setdefault(0, "background")
    for i in names:
        colours.setdefault(i, _auto_colour(i))
    try:
        return LabelSet(names=names, colours=colours)
    except UserError as exc:
        raise UserError(f"{path}: {exc.message}") from exc


def write_labels(path: str | Path, labels: LabelSet) -> None:
    atomic_write_json(path, labels.to_json())


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label map as uint8 (H, W) of class ids (255 = ignore).

    Palette PNGs give their indices; greyscale PNGs their values; ``.npy`` files an integer
    array. RGB colour masks are refused with a message (their colours are not ids).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: mask file not found")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path}: cannot read .npy mask ({exc})") from exc
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"{path}: a .npy mask must be a 2-D integer array, got {arr.dtype} {arr.shape}")
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise UserError(f"{path}: mask ids must be in 0..255")
        return arr.astype(np.uint8)
    from coordgan_cli.io.images import _decode_errors

    # Pillow's failures (0-byte, truncated, not an image, decompression bomb) as one line naming the file.
    with _decode_errors(path), Image.open(path) as img:
        img.load()
        if img.mode == "P":
            return np.asarray(img, dtype=np.uint8).copy()
        if img.mode in ("L", "I;16", "I"):
            arr = np.asarray(img)
            if arr.max(initial=0) > 255:
                raise UserError(f"{path}: mask ids must be in 0..255, found {int(arr.max())}")
            return arr.astype(np.uint8)
        if img.mode == "LA":
            return np.asarray(img.getchannel(0), dtype=np.uint8).copy()
        raise UserError(
            f"{path}: mask is a {img.mode} colour image; give a palette PNG, a greyscale id PNG or a .npy id array"
        )


def write_mask(path: str | Path, mask: np.ndarray, labels: LabelSet) -> None:
    """Write a uint8 (H, W) id map atomically as a palette PNG coloured by ``labels``."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    img = Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)), mode="P")
    img.putpalette(labels.palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False)


def check_mask_ids(mask: np.ndarray, labels: LabelSet, where: str) -> None:
    """Every id in ``mask`` (besides 255) must be named in ``labels``."""
    present = set(np.unique(mask).tolist()) - {IGNORE}
    unknown = sorted(present - set(labels.names))
    if unknown:
        raise UserError(f"{where}: class id(s) {unknown} are not in the labels file (known: {labels.ids})")


def colourise(mask: np.ndarray, labels: LabelSet) -> np.ndarray:
    """(H, W) ids → (H, W, 3) uint8 colours."""
    return labels.colour_array()[mask]
