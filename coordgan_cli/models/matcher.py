"""``FeatureMatcher``: a small multi-scale dense feature extractor for correlation matching.

A tiny U-Net / FPN: a stem at input resolution, ``depth`` stride-2 encoder stages (each doubling
the width, capped at 8× ``width``), then a top-down path that upsamples, adds the encoder skip
(1×1 lateral) and refines with a 3×3 conv, back to the input resolution, and a 1×1 output conv to
``out_channels``. Blocks are Conv–GroupNorm–LeakyReLU (CoCosNet's domain adaptors use
Conv–InstanceNorm–LeakyReLU; GroupNorm is batch-independent like InstanceNorm but keeps some
contrast information across channels). The receptive field grows with depth, which is what lets
a pixel's feature describe *where on the object* it is, not only its local colour.

The optional projection head is MCL-Net's (after CUT): a per-position two-layer MLP with 256
units, applied to features before the contrastive loss only; correlation uses the backbone
features (``forward``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nn.Sequential):
    """Conv(k×k, stride) → GroupNorm → LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.LeakyReLU(0.2),
        )


class ProjectionHead(nn.Module):
    """MCL-Net / CUT projection: per-position Linear(D→hidden) → ReLU → Linear(hidden→hidden)."""

    def __init__(self, in_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (..., D) → (..., hidden)."""
        return self.fc2(F.relu(self.fc1(features)))


class FeatureMatcher(nn.Module):
    """Per-pixel features at input resolution.

    Args:
        in_channels: image channels (3).
        width: channels of the stem; stage i has min(width·2^i, 8·width).
        depth: number of stride-2 stages (receptive-field growth); inputs need no special size.
        out_channels: feature width D returned by ``forward``.
        projection: add the 2-layer projection head used by the contrastive loss.
        projection_dim: hidden/output units of that head (the supplement: 256).
    """

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 3, out_channels: int = 64,
                 projection: bool = True, projection_dim: int = 256) -> None:
        super().__init__()
        if min(in_channels, width, out_channels) < 1 or depth < 0:
            raise ValueError("in_channels, width and out_channels must be >= 1 and depth >= 0")
        self.config = {"in_channels": in_channels, "width": width, "depth": depth, "out_channels": out_channels,
                       "projection": projection, "projection_dim": projection_dim}
        widths = [min(width * 2**i, width * 8) for i in range(depth + 1)]
        self.stem = nn.Sequential(ConvBlock(in_channels, widths[0]), ConvBlock(widths[0], widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(ConvBlock(widths[i], widths[i + 1], stride=2), ConvBlock(widths[i + 1], widths[i + 1]))
            for i in range(depth)
        )
        # Top-down path: every level is brought to the stem width before adding (FPN style).
        self.lateral = nn.ModuleList(nn.Conv2d(w, widths[0], 1) for w in widths)
        self.smooth = nn.ModuleList(ConvBlock(widths[0], widths[0]) for _ in range(depth))
        self.out = nn.Conv2d(widths[0], out_channels, 1)
        self.head = ProjectionHead(out_channels, projection_dim) if projection else None

    @property
    def out_channels(self) -> int:
        return self.config["out_channels"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, in_channels, H, W), in [-1, 1] → features (B, out_channels, H, W)."""
        if images.dim() != 4 or images.shape[1] != self.config["in_channels"]:
            raise ValueError(f"expected (B,{self.config['in_channels']},H,W) images, got {tuple(images.shape)}")
        skips = [self.stem(images)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        x = self.lateral[-1](skips[-1])
        for level in range(len(skips) - 2, -1, -1):
            x = F.interpolate(x, size=skips[level].shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[level](x + self.lateral[level](skips[level]))
        return self.out(x)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Sampled features (N, D) → embeddings for the contrastive loss (N, D') (identity without a head)."""
        return features if self.head is None else self.head(features)
