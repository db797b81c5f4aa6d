"""Scoring label files that a labelling run wrote against true masks (``coordgan demo``), with the
paper's IoU rules (``metrics.iou``: background excluded, intersections and unions summed)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from coordgan_cli.metrics.iou import IoUAccumulator, IoUResult, summarize


def score_label_pairs(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, name: str) -> IoUResult:
    """IoU of (predicted (H, W) ids, true (H, W) ids) pairs, summed over the pairs as one set ``name``."""
    acc = IoUAccumulator(num_classes)
    for predicted, truth in pairs:
        acc.update(predicted, truth)
    return summarize({name: acc}, num_classes)


def score_labels(out: Path, data: Path, names: list[str], reference_mask: np.ndarray,
                 num_classes: int) -> tuple[IoUResult, IoUResult]:
    """(labels IoUResult, identity IoUResult) of the label PNGs ``out/labels/<name>.png`` (as
    ``coordgan propagate`` writes them) against the true masks ``data/masks/<file name>``; the
    identity baseline scores ``reference_mask`` against each of them."""
    from coordgan_cli.io.masks import read_mask

    truths = [read_mask(data / "masks" / Path(name).name) for name in names]
    ours = score_label_pairs(((read_mask(out / "labels" / Path(name).with_suffix(".png")), truth)
                              for name, truth in zip(names, truths)), num_classes, "model")
    identity = score_label_pairs(((reference_mask, truth) for truth in truths), num_classes, "identity")
    return ours, identity
