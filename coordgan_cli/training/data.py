"""Training images from a folder: recursive, sorted, resized and centre-cropped, optional flips.

The order of samples is a pure function of (seed, position in the stream): epoch ``e`` is a
permutation drawn from ``SeedSequence([seed, e])``, and each position carries its own flip bit.
Nothing about the data order lives in mutable state, so a resumed run (or any rank of a
distributed one) reads exactly the samples an uninterrupted single-process run would.

An unreadable file is reported once and skipped: its slot takes the next readable image of the
sorted list (deterministically, so a rerun sees the same substitution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from coordgan_cli.errors import UserError
from coordgan_cli.io.images import ImageReadError, list_images, read_image


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (size, size, 3): scale the short side to ``size`` (Lanczos when
    shrinking, bicubic when enlarging), then crop the centre."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    pil = Image.fromarray(image)
    if (nh, nw) != (h, w):
        pil = pil.resize((nw, nh), Image.LANCZOS if scale < 1 else Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)))


class ImageFolderData:
    """Images of a folder (recursive, sorted by relative path) at ``size`` × ``size``.

    ``batch(positions) -> (N, 3, size, size)`` float32 in [-1, 1] for positions in the endless
    sample stream (see the module doc). Decoded images are cached in memory up to
    ``cache_bytes``. ``on_skip(path, message)`` is called once per unreadable file.
    """

    def __init__(self, root: str | Path, size: int, *, seed: int, hflip: bool,
                 cache_bytes: int = 1 << 30, on_skip: Optional[Callable[[Path, str], None]] = None) -> None:
        root = Path(root)
        if not str(root) or str(root) == ".":
            raise UserError("no training data: set data.path in the recipe or pass --data DIR")
        if not root.exists():
            raise UserError(f"{root}: training image folder not found (set data.path or pass --data DIR)")
        self.paths = list_images(root)
        if not self.paths:
            raise UserError(f"{root}: no images found (looked recursively for png, jpg, ...)")
        self.root = root
        self.size = size
        self.seed = seed
        self.hflip = hflip
        self.skipped: dict[str, str] = {}
        self._on_skip = on_skip
        self._cache: dict[int, np.ndarray] = {}
        self._cache_budget = cache_bytes // (size * size * 3)
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xDA7A, epoch]))
            self._epochs = {k: v for k, v in self._epochs.items() if k >= epoch - 1}
            self._epochs[epoch] = (rng.permutation(len(self.paths)), rng.random(len(self.paths)) < 0.5)
        return self._epochs[epoch]

    def _load(self, index: int) -> np.ndarray:
        """The image at ``index`` of the sorted list, or the next readable one."""
        n = len(self.paths)
        for offset in range(n):
            i = (index + offset) % n
            if i in self._cache:
                return self._cache[i]
            key = self.paths[i].relative_to(self.root).as_posix()
            if key in self.skipped:
                continue
            try:
                image = resize_center_crop(read_image(self.paths[i]), self.size)
            except (ImageReadError, UserError, OSError, ValueError) as exc:
                message = getattr(exc, "message", str(exc))
                self.skipped[key] = message
                if self._on_skip is not None:
                    self._on_skip(self.paths[i], message)
                continue
            if len(self._cache) < self._cache_budget:
                self._cache[i] = image
            return image
        raise UserError(f"{self.root}: none of the {n} image files could be read")

    def batch(self, positions: range | list[int]) -> torch.Tensor:
        """Images at stream positions ``positions``: (N, 3, size, size) float32 in [-1, 1]."""
        out = []
        n = len(self.paths)
        for pos in positions:
            order, flips = self._epoch(pos // n)
            image = self._load(int(order[pos % n]))
            if self.hflip and flips[pos % n]:
                image = image[:, ::-1]
            out.append(torch.from_numpy(np.array(image, copy=True)))  # cached arrays stay untouched
        x = torch.stack(out).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0
