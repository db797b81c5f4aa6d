"""Label-propagation IoU exactly as the CoordGAN paper scores it (DESIGN §4).

The protocol, rule by rule:

- For one reference, intersection and union of every class are **summed over all queries**
  first; the class IoU is ΣI / ΣU (not a mean of per-image IoUs).
- Background (id 0) is never scored.
- A prediction on a pixel whose ground truth is background is ignored: it counts neither as a
  predicted pixel nor as a miss (the reference code multiplies the prediction by ``truth > 0``).
- Ground-truth pixels labelled 255 (ignore) are dropped entirely; a predicted 255 (e.g. a
  low-confidence pixel) is "no class": it can only add to the ground-truth side of a union.
- A class whose union is zero over all queries scores 0 and still counts in the mean.
- The mean runs over the classes 1..C-1 minus an ``exclude`` set (DatasetGAN face-34 leaves hair
  and neck out → 31 classes), then over the references.

Everything here is pure NumPy: label maps in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

IGNORE = 255


def intersection_union(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                       *, ignore_index: int = IGNORE) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union of one query, under the paper's rules.

    Args:
        prediction: (H, W) integer class ids (``ignore_index`` = no prediction).
        truth: (H, W) integer class ids, 0 = background, ``ignore_index`` = ignored pixel.
        num_classes: C, background included.

    Returns:
        (intersection, union): two (C,) int64 arrays; entry 0 (background) is always 0.
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    scored = truth != ignore_index
    pred = prediction[scored].astype(np.int64)
    true = truth[scored].astype(np.int64)
    # Predictions on ground-truth background are ignored (set to background, which is unscored).
    pred = np.where(true > 0, pred, 0)
    # A predicted "ignore" is no class at all; so is any id outside 1..C-1.
    pred = np.where((pred > 0) & (pred < num_classes), pred, 0)
    true = np.where(true < num_classes, true, 0)
    area_pred = np.bincount(pred, minlength=num_classes)[:num_classes]
    area_true = np.bincount(true, minlength=num_classes)[:num_classes]
    hit = pred[(pred == true) & (pred > 0)]
    inter = np.bincount(hit, minlength=num_classes)[:num_classes]
    union = area_pred + area_true - inter
    inter[0] = 0
    union[0] = 0
    return inter.astype(np.int64), union.astype(np.int64)


@dataclass
class IoUAccumulator:
    """ΣI and ΣU of one reference over all its queries."""

    num_classes: int
    intersection: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    queries: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one query's (H, W) prediction against its (H, W) ground truth."""
        inter, union = intersection_union(prediction, truth, self.num_classes)
        self.intersection += inter
        self.union += union
        self.queries += 1

    def class_iou(self) -> np.ndarray:
        """(C,) float64 ΣI/ΣU; 0 where the union is 0 (and for background)."""
        return class_iou(self.intersection, self.union)


def class_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """(C,) ΣI/ΣU with 0 for classes whose union is zero."""
    intersection = np.asarray(intersection, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.zeros_like(union)
    np.divide(intersection, union, out=out, where=union > 0)
    return out


def scored_classes(num_classes: int, exclude: Iterable[int] = ()) -> list[int]:
    """The class ids that enter the mean: 1..C-1 without ``exclude``."""
    excluded = set(int(c) for c in exclude)
    return [c for c in range(1, num_classes) if c not in excluded]


@dataclass(frozen=True)
class IoUResult:
    """mIoU over references of the mean over scored classes.

    Attributes:
        miou: the final number (fraction in [0, 1]).
        per_class: class id → IoU averaged over references (scored classes only).
        per_reference: reference name → {"miou", "per_class" (id → IoU), "queries"}.
        classes: the scored class ids, in order.
    """

    miou: float
    per_class: dict[int, float]
    per_reference: dict[str, dict]
    classes: list[int]


def summarize(accumulators: Mapping[str, IoUAccumulator] | Sequence[tuple[str, IoUAccumulator]],
              num_classes: int, exclude: Iterable[int] = ()) -> IoUResult:
    """Turn per-reference ΣI/ΣU into the paper's mIoU.

    Args:
        accumulators: reference name → its accumulator (insertion order is kept).
        num_classes: C, background included.
        exclude: class ids left out of the mean (e.g. face-34 hair and neck).
    """
    items = list(accumulators.items()) if isinstance(accumulators, Mapping) else list(accumulators)
    if not items:
        raise ValueError("no references to summarise")
    classes = scored_classes(num_classes, exclude)
    if not classes:
        raise ValueError("no classes left to score")
    per_reference: dict[str, dict] = {}
    table = np.zeros((len(items), len(classes)), dtype=np.float64)
    for r, (name, acc) in enumerate(items):
        iou = acc.class_iou()
        table[r] = iou[classes]
        per_reference[name] = {
            "miou": float(table[r].mean()),
            "per_class": {c: float(iou[c]) for c in classes},
            "queries": int(acc.queries),
        }
    per_class_mean = table.mean(axis=0)
    # Every reference scores the same class set, so the mean over references of per-reference
    # means equals the mean over classes of per-class means.
    return IoUResult(
        miou=float(table.mean(axis=1).mean()),
        per_class={c: float(v) for c, v in zip(classes, per_class_mean)},
        per_reference=per_reference,
        classes=classes,
    )
