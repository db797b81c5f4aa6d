"""A projection head on frozen backbone hypercolumns (MCL-Net's: two 1×1 convolutions, 256 wide).

Trained by ``coordgan train-matcher --data FOLDER`` (``training.adapt``) and used by the
``features`` / ``classifier`` matchers through ``HeadEncoder``, a ``HypercolumnEncoder`` whose
hypercolumns pass through the head: ``make_matcher("features", matcher_ckpt=RUN/latest.pt)``
(``--matcher features --matcher-ckpt RUN/latest.pt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder
from coordgan_cli.errors import UserError


class ProjectionHead(nn.Module):
    """(B, C, h, w) hypercolumns → (B, channels, h, w): 1×1 conv, ReLU, 1×1 conv."""

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__()
        self.config = {"in_channels": int(in_channels), "channels": int(channels)}
        self.net = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def backbone_record(backbone) -> dict:
    """What a head checkpoint records of the backbone it was trained on (must match at use)."""
    return {"name": backbone.name, "layers": list(backbone.layers), "stride": int(backbone.stride),
            "channels": int(backbone.channels)}


def load_head(path: str | Path, device: torch.device | str = "cpu") -> tuple[ProjectionHead, dict]:
    """The head of a ``train-matcher --data`` checkpoint (eval mode, on ``device``) and its backbone record."""
    from coordgan_cli.io.checkpoint import load_checkpoint, load_state_strict

    data = load_checkpoint(path)
    if data["kind"] != "matcher" or "head" not in data["networks"]:
        raise UserError(f"{path}: not a projection head (train one with `coordgan train-matcher --data FOLDER`); "
                        "a correlation matcher checkpoint goes with --matcher correlation")
    extra = data.get("extra") or {}
    head = ProjectionHead(**extra["head_args"])
    load_state_strict(head, data["networks"]["head"], "head", path)
    return head.to(device).eval(), dict(extra["backbone"])


class HeadEncoder(HypercolumnEncoder):
    """Hypercolumns passed through a trained ``ProjectionHead`` (the matchers' feature hook)."""

    def __init__(self, backbone, working_size: int, head: ProjectionHead, record: dict, source: str = "") -> None:
        super().__init__(backbone, working_size)
        own = backbone_record(backbone)
        if own != record:
            raise UserError(f"{source or 'head'}: trained on backbone {record['name']} layers {record['layers']} "
                            f"stride {record['stride']}, but the matcher uses {own['name']} layers {own['layers']} "
                            f"stride {own['stride']}; pass the same --backbone (and layers)")
        self.head = head.to(self.device).eval()
        self.head_source = source

    def encode(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return self.head(super().encode(images).clone()).float()
