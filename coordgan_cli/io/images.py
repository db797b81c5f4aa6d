"""Reading and writing images, and finding them in folders, list files or stdin."""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class ImageReadError(UserError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit / 32-bit greyscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: transparent areas become a neutral background, not black garbage.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


@contextlib.contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    """Turn whatever Pillow raises for a bad file into one ImageReadError naming ``path``
    (decompression bombs included: the warning-level guard is made an error too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{path}: image is too large ({exc}); Pillow's decompression-bomb guard refused it") \
            from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageReadError(f"{path}: not an image file Pillow can read (an empty, 0-byte file)") from exc
        if isinstance(exc, UnidentifiedImageError):
            raise ImageReadError(f"{path}: not an image file Pillow can read") from exc
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from exc


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), applying its EXIF orientation.

    Greyscale, palette, RGBA (composited on white) and 16-bit inputs are converted. Raises
    ImageReadError naming the file for anything unreadable (empty, truncated, not an image,
    or refused by Pillow's decompression-bomb guard).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    with _decode_errors(path):
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_uint8_rgb(img)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, reading only the header where possible.

    Raises ImageReadError naming the file (missing, empty, not an image, decompression bomb)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    with _decode_errors(path):
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def write_image(path: str | Path, array: np.ndarray, *, quality: int = 92) -> None:
    """Write an RGB/greyscale uint8 array atomically (format from the extension)."""
    path = Path(path)
    img = Image.fromarray(np.ascontiguousarray(array))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown image extension {path.suffix!r}")
    with atomic_path(path) as tmp:
        if fmt == "JPEG":
            img.convert("RGB").save(tmp, format=fmt, quality=quality)
        else:
            img.save(tmp, format=fmt)


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursive), sorted by relative POSIX path.

    Hidden files and folders (leading '.') are skipped. A missing folder is a UserError.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: folder not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    found = [
        p
        for p in root.rglob("*")
        if p.is_file() and is_image_path(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def relative_name(path: str | Path, root: str | Path | None) -> str:
    """The key that pairs an image with its map, mask and keypoints: path relative to ``root``, POSIX."""
    path = Path(path)
    if root is None:
        return path.name
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.name


def read_path_list(source: str | Path) -> tuple[Path | None, list[Path]]:
    """Resolve an image source: a folder, a text file of paths (one per line, '#' comments), or '-'.

    Returns (root, paths): root is the folder for a folder source, else the list file's folder
    (relative paths in a list file are relative to it) or None for stdin.
    """
    if str(source) == "-":
        lines = sys.stdin.read().splitlines()
        return None, _paths_from_lines(lines, Path.cwd(), "<stdin>")
    source = Path(source)
    if source.is_dir():
        return source, list_images(source)
    if source.is_file():
        if is_image_path(source):
            return source.parent, [source]
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"{source}: expected a folder, an image or a UTF-8 text file of image paths") from exc
        return source.parent, _paths_from_lines(lines, source.parent, str(source))
    raise UserError(f"{source}: no such folder or file")


def _paths_from_lines(lines: Sequence[str], base: Path, where: str) -> list[Path]:
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        paths.append(p if p.is_absolute() else base / p)
    if not paths:
        raise UserError(f"{where}: the path list is empty")
    return paths


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array (for embedding in reports)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()
