"""What the matchers on pretrained-backbone hypercolumns share (``features``, ``classifier``):
fitting on ``labelling.References``, checking and mirroring the references, the backbone part of
the resume settings."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from coordgan_cli.correspondence.hypercolumns import IGNORE, check_image, flip_mask, mirror_pairs
from coordgan_cli.labelling.matchers import MatcherBase


class BackboneMatcher(MatcherBase):
    """Subclasses set ``encoder`` and ``flip_swap`` and implement ``fit_arrays``."""

    encoder: Any
    flip_swap: Optional[dict[int, int] | str] = None
    classes: list[int]
    class_balance: float = 0.0

    @staticmethod
    def check_class_balance(alpha: float) -> float:
        if alpha < 0:
            raise ValueError(f"class_balance must be >= 0, got {alpha}")
        return float(alpha)

    def balance_weights(self, areas: torch.Tensor) -> torch.Tensor:
        """(K,) weights on the class probabilities from the references' (K,) class areas.

        A prediction learnt from the references carries their class frequencies as its prior;
        part classes get (area / mean part area)^-class_balance, which divides that prior out
        (fully at 1), so a small part is not outvoted by a large one only because the references
        hold more of it. Background keeps weight 1; a class without area gets the largest part
        weight (nothing votes for it anyway)."""
        weights = torch.ones_like(areas, dtype=torch.float32)
        parts = torch.tensor([c != 0 for c in self.classes], device=areas.device)
        present = parts & (areas > 0)
        if self.class_balance == 0 or not bool(present.any()):
            return weights
        shares = areas[present].float() / areas[present].float().mean()
        weights[present] = shares.pow(-self.class_balance)
        weights[parts & ~present] = weights[present].max()
        return weights

    def fit(self, references) -> None:
        """Fit on ``labelling.References``: probabilities over ``references.classes``; with
        ``flip_swap="auto"`` the mirror table comes from the label names (left/right, l_/r_)."""
        self.references = references
        self.fit_arrays(references.images, references.masks, references.classes,
                        names=dict(references.labels.names))

    def backbone_settings(self) -> dict[str, Any]:
        """The encoder's part of what the propagate resume key records."""
        backbone = self.encoder.backbone
        settings = {"matcher": self.name, "backbone": backbone.name, "layers": backbone.layers,
                    "stride": backbone.stride, "work_size": self.encoder.working_size,
                    "flip": self.flip_swap is not None}
        head = getattr(self.encoder, "head_source", None)  # a projection head (train-matcher --data)
        return settings | ({"head": head} if head else {})

    def _fitted(self):
        if not self.classes:
            raise RuntimeError(f"matcher {self.name!r}: call fit(references) or fit_arrays before predicting")
        return self

    def prepare_references(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                           classes: Optional[Sequence[int]], names: Optional[dict[int, str]]
                           ) -> tuple[list[np.ndarray], list[np.ndarray], Optional[dict[int, int]]]:
        """Check the references, add their mirrored copies (left/right classes renamed) when
        ``flip_swap`` asks for them and set ``self.classes`` (default: the ids in the masks after
        mirroring, 255 excluded). Returns (images, masks, swap table or None); the originals come
        first."""
        if not images or len(images) != len(masks):
            raise ValueError("fit_arrays needs as many masks as images, at least one")
        images = [check_image(im, f"reference {i}") for i, im in enumerate(images)]
        masks = [np.asarray(m) for m in masks]
        for i, (im, m) in enumerate(zip(images, masks)):
            if m.shape != im.shape[:2]:
                raise ValueError(f"reference {i}: mask {m.shape} and image {im.shape[:2]} differ in size")
        swap = self.flip_swap
        if swap == "auto":
            swap = mirror_pairs(names) if names else None
        if swap is not None:
            images = images + [np.ascontiguousarray(im[:, ::-1]) for im in images]
            masks = masks + [flip_mask(m, swap) for m in masks]
        if classes is None:  # after mirroring: a right part seen only in a mirrored left one counts
            classes = sorted(set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist()) - {IGNORE})
        self.classes = sorted(int(c) for c in classes)
        return images, masks, swap
