"""The annotated references of a labelling run: images, masks and the label set, validated once.

``References`` is what every matcher's ``fit`` receives. Build it from (image, mask) pairs (paths or
arrays), a pairs file ("image mask" per line) or a COCO export holding the masks; every check —
files readable, mask at its image's size, something labelled, ids known to the labels file — runs
here, and a mistake is one ``UserError`` naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from coordgan_cli.errors import UserError

ImageLike = Union[str, Path, np.ndarray, Any]  # a path, an (H, W, 3) uint8 array or a PIL image
Pair = tuple[ImageLike, Union[str, Path, np.ndarray, None]]


def name_candidates(rel: str) -> list[str]:
    """Store keys to try for an image named ``rel``: the name, then its shorter path tails
    ("x/images/sub/a.png" → "images/sub/a.png" → "sub/a.png" → "a.png"), since a store names
    images relative to its own folder, which may sit below the list file's folder."""
    parts = PurePosixPath(rel).parts
    return [str(PurePosixPath(*parts[i:])) for i in range(len(parts))]


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def as_rgb(image: ImageLike) -> np.ndarray:
    """An (H, W, 3) uint8 array from a NumPy array (RGB or greyscale) or a PIL image."""
    if not isinstance(image, np.ndarray):
        if hasattr(image, "convert"):  # a PIL image
            image = np.array(image.convert("RGB"))
        else:
            raise TypeError(f"expected an (H, W, 3) uint8 array or a PIL image, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return np.array(image, order="C") if not image.flags.writeable else np.ascontiguousarray(image)


def read_pairs_file(path: Path) -> list[tuple[Path, Optional[Path]]]:
    """A pairs file: one reference per line, 'image mask' (whitespace, comma or tab separated;
    the mask may be left out when a COCO file gives it). Relative paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --refs file not found")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in line.replace(",", " ").replace("\t", " ").split(" ") if p]
        if len(parts) > 2:
            raise UserError(f"{path}:{n}: expected 'image mask', got {len(parts)} fields")
        located = [Path(p) if Path(p).is_absolute() else path.parent / p for p in parts]
        pairs.append((located[0], located[1] if len(located) == 2 else None))
    if not pairs:
        raise UserError(f"{path}: no references listed")
    return pairs


def reference_pairs(pairs_file: Optional[Path], images: Sequence[Path], masks: Sequence[Path],
                    coco: Optional[Path] = None, *, warn: Callable[[str], None] = lambda m: None
                    ) -> list[tuple[Path, Optional[Path]]]:
    """The (image, mask) pairs that propagate's --refs (first), --ref and --mask name; a mask may be
    None when ``coco`` gives the masks. A pair given twice is kept once, with a warning (a repeat
    would only double the work and the weight of that reference's vote)."""
    pairs: list[tuple[Path, Optional[Path]]] = read_pairs_file(pairs_file) if pairs_file is not None else []
    if masks and len(masks) != len(images):
        raise UserError(f"{len(images)} --ref but {len(masks)} --mask: give one mask per reference "
                        "(in the same order)")
    if not masks and images and coco is None:
        raise UserError("--ref needs a --mask per reference (or --ref-coco with their annotations)")
    pairs.extend(zip(images, masks if masks else [None] * len(images)))
    kept: dict[tuple[str, str], tuple[Path, Optional[Path]]] = {}
    for image, mask in pairs:
        key = (str(Path(image).resolve()), str(Path(mask).resolve()) if mask is not None else "")
        if key in kept:
            warn(f"reference {image} with mask {mask if mask is not None else '(from --ref-coco)'} is given twice: "
                 "using it once")
            continue
        kept[key] = (image, mask)
    return list(kept.values())


def _find_labels_file(masks: list[Path]) -> Optional[Path]:
    for mask in masks:
        for folder in (mask.parent, mask.parent.parent):
            candidate = folder / "labels.json"
            if candidate.is_file():
                return candidate
    return None


@dataclass
class References:
    """Annotated references, each at its own size.

    images: (H, W, 3) uint8; masks: (H, W) uint8 label ids (255 = ignore); names: the key of each
    reference (its path relative to the queries' folder when one was given, else its file name);
    paths: its image file (None for an in-memory array); classes: every label id 0..max (declared
    by the labels file or present in a mask), background 0 included — matchers' class
    probabilities are over this order, so ``probs[k]`` is label id ``classes[k]`` (== k); labels:
    the LabelSet (id → name, colour); labels_file: where it came from (None: COCO or default);
    store_names: per reference, the store keys to try, most specific first; mask_paths: per
    reference, its mask file (None for an array or a mask from COCO).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]
    paths: list[Optional[Path]]
    classes: tuple[int, ...]
    labels: Any  # coordgan_cli.io.masks.LabelSet
    labels_file: Optional[Path] = None
    store_names: list[list[str]] = field(default_factory=list)
    mask_paths: list[Optional[Path]] = field(default_factory=list)  # per reference; None: an array or COCO

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(image.shape[:2]) for image in self.images]  # type: ignore[misc]

    @property
    def side(self) -> int:
        """The largest image side (the default vote temperature scales with it)."""
        return max(max(size) for size in self.sizes)

    def fingerprint(self) -> list[list[str]]:
        """[[name, sha256 of the mask]] per reference: the resume key's record of the references."""
        return [[n, hashlib.sha256(m.tobytes()).hexdigest()] for n, m in zip(self.names, self.masks)]

    # ---- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair], *, labels: Any = None, coco: Optional[Path] = None,
                   root: Optional[Path] = None, resize_mask: bool = False,
                   info: Callable[[str], None] = lambda message: None,
                   warn: Callable[[str], None] = lambda message: None) -> "References":
        """References from (image, mask) pairs: each a path or an array (image also a PIL image).

        labels: a LabelSet or a labels.json path (default: labels.json beside the masks, else the
        COCO file's categories, else default names); coco: a COCO file giving the masks of pairs
        whose mask is None (images matched by file_name); root: the queries' folder, which names
        the references (store lookups, the resume key); resize_mask: resize a mask of another
        size than its image (nearest) instead of refusing it.
        """
        from coordgan_cli.io.masks import read_labels

        if not pairs:
            raise UserError("no references: give --ref IMAGE --mask MASK (repeatable), --refs pairs.txt or --ref-coco")
        for img, m in pairs:
            if isinstance(img, (str, Path)) and not Path(img).is_file():
                raise UserError(f"{img}: reference image not found")
            if m is None and coco is None:
                raise UserError(f"{img}: reference has no mask (add it, or give --ref-coco)")
        labels_file = None
        if isinstance(labels, (str, Path)):
            labels_file, labels = Path(labels), read_labels(labels)
        elif labels is None and coco is None:
            labels_file = _find_labels_file([Path(m) for _, m in pairs if isinstance(m, (str, Path))])
            if labels_file is not None:
                labels = read_labels(labels_file)
                info(f"labels: {labels_file}")
        refs = cls(images=[], masks=[], names=[], paths=[], classes=(), labels=labels, labels_file=labels_file)
        for i, (img, m) in enumerate(pairs):
            refs._add(i, img, m, coco, root, resize_mask)
        refs._finish(warn)
        return refs

    @classmethod
    def from_pairs_file(cls, path: Union[str, Path], **options: Any) -> "References":
        """References listed in a pairs file ('image mask' per line; options as ``from_pairs``)."""
        return cls.from_pairs(read_pairs_file(Path(path)), **options)

    @classmethod
    def from_coco(cls, coco: Union[str, Path], images: Sequence[ImageLike], **options: Any) -> "References":
        """References whose masks come from a COCO export (CVAT, Label Studio), matched by file name."""
        return cls.from_pairs([(image, None) for image in images], coco=Path(coco), **options)

    # ---- validation -------------------------------------------------------------------------------

    def _add(self, i: int, img: ImageLike, m: Any, coco: Optional[Path], root: Optional[Path],
             resize_mask: bool) -> None:
        from coordgan_cli.io.coco import read_reference_coco
        from coordgan_cli.io.images import read_image, relative_name
        from coordgan_cli.io.masks import IGNORE, read_mask

        path = Path(img) if isinstance(img, (str, Path)) else None
        image = read_image(path) if path is not None else as_rgb(img)
        size = image.shape[:2]
        label = path.name if path is not None else f"reference{i}"
        candidates = name_candidates(relative_name(path, root)) if (root is not None and path is not None) else []
        candidates = list(dict.fromkeys(candidates + [label]))
        if m is None:
            mask, coco_labels, _ = read_reference_coco(coco, candidates, self.labels)
            self.labels = self.labels or coco_labels
            where = f"{coco} ({label})"
        elif isinstance(m, np.ndarray):
            mask, where = np.asarray(m, dtype=np.uint8), f"mask of {label}"
        else:
            mask, where = read_mask(m), str(m)
        if mask.shape != tuple(size):
            if not resize_mask:
                raise UserError(f"{where}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {path or label} is "
                                f"{size[1]}×{size[0]}; give a mask of the image's size or pass --resize-mask")
            mask = resize_nearest(mask, size)
        if not ((mask != IGNORE) & (mask != 0)).any():
            raise UserError(f"{where}: mask is empty (no labelled pixel besides background/ignore)")
        self.images.append(image)
        self.masks.append(mask)
        self.names.append(candidates[0])
        self.paths.append(path)
        self.store_names.append(candidates)
        self.mask_paths.append(Path(m) if isinstance(m, (str, Path)) else None)

    def _finish(self, warn: Callable[[str], None]) -> None:
        from coordgan_cli.io.masks import IGNORE, check_mask_ids, default_labels

        top = max(int(m[m != IGNORE].max()) for m in self.masks)
        if self.labels is None:
            self.labels = default_labels(top + 1)
            warn(f"no labels file (--labels, or labels.json beside the masks): using default names for ids 0..{top}")
        for m, path, name in zip(self.masks, self.paths, self.names):
            check_mask_ids(m, self.labels, f"mask of {path if path is not None else name}")
        self.classes = tuple(range(max(self.labels.num_classes, top + 1)))
