"""A labelled folder of real photos: ``DIR/images/``, ``DIR/masks/``, ``DIR/labels.json``.

Layout (``scripts/convert_realdata.py`` writes the shared real sets this way):

    DIR/images/<name>.<jpg|png|…>   any size, any common format (sub-folders allowed)
    DIR/masks/<name>.png            the same relative name with .png (or .npy): class ids, palette
                                    or greyscale, 0 = background, 255 = ignore, same H×W as the image
    DIR/labels.json                 id → name (and colour), ``io.masks.read_labels`` format

Images are paired with masks by relative path without extension, never by sort order. Every
mistake (a missing folder or labels file, an image without a mask, a mask of another size or
with ids the labels file does not name) is a one-line UserError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordgan_cli.errors import UserError
from coordgan_cli.io.images import list_images, read_image
from coordgan_cli.io.masks import LabelSet, check_mask_ids, read_labels, read_mask

MASK_SUFFIXES = (".png", ".npy")


@dataclass(frozen=True)
class FolderDataset:
    """A labelled folder. ``names`` are image paths relative to ``images/`` without extension,
    POSIX, sorted; ``image(i)`` / ``mask(i)`` read one pair."""

    root: Path
    labels: LabelSet
    names: list[str]
    image_paths: list[Path]
    mask_paths: list[Path]

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise UserError(f"{self.root}: no image named {name!r} (first: {self.names[:3]})") from None

    def image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return read_image(self.image_paths[i])

    def mask(self, i: int) -> np.ndarray:
        """(H, W) uint8 class ids, checked against the labels file."""
        mask = read_mask(self.mask_paths[i])
        check_mask_ids(mask, self.labels, str(self.mask_paths[i]))
        return mask

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, mask (H, W) uint8) of the same size (else UserError)."""
        image, mask = self.image(i), self.mask(i)
        if image.shape[:2] != mask.shape:
            raise UserError(f"{self.mask_paths[i]}: mask is {mask.shape[1]}×{mask.shape[0]} but its image "
                            f"{self.image_paths[i].name} is {image.shape[1]}×{image.shape[0]}; "
                            "masks must match their images")
        return image, mask


def read_folder_dataset(root: str | Path) -> FolderDataset:
    """Index ``root`` (see the module docstring); reads no pixels."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise UserError(f"{root / sub}: missing; a labelled folder has images/, masks/ and labels.json")
    labels_file = root / "labels.json"
    if not labels_file.is_file():
        raise UserError(f"{labels_file}: missing; write the class names there "
                        "(e.g. {\"0\": \"background\", \"1\": \"hood\"})")
    labels = read_labels(labels_file)
    images = list_images(root / "images")
    if not images:
        raise UserError(f"{root / 'images'}: no images found")
    names, masks = [], []
    for path in images:
        stem = path.relative_to(root / "images").with_suffix("").as_posix()
        found = [root / "masks" / (stem + s) for s in MASK_SUFFIXES if (root / "masks" / (stem + s)).is_file()]
        if not found:
            raise UserError(f"{root / 'masks' / (stem + '.png')}: mask missing for image "
                            f"{path.relative_to(root).as_posix()}")
        if stem in names:
            raise UserError(f"{path}: two images share the name {stem!r} (they differ only by extension)")
        names.append(stem)
        masks.append(found[0])
    return FolderDataset(root=root, labels=labels, names=names, image_paths=images, mask_paths=masks)
