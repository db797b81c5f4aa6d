"""Image encoder: real image → (structure w, texture W+) (DESIGN §2).

Trunk: 1×1 from-RGB, then one downsampling residual block per further width in ``channels``
(paper: 32→64→128→256→512, 128 px → 8×8). Structure head: 1×1 conv (C → C, leaky ReLU), 1×1
conv (C → structure_channels), flatten, one linear layer → structure w. Texture head: strided
3×3 convs (widths ``texture_channels``, paper 1024, 2048: 8×8 → 2×2), global average pool, one
linear layer per W+ entry. At the paper size this is 41.1 M parameters (DESIGN §2: ≈ 41 M); the
texture convs (23.6 M) and the twelve W+ heads (12.6 M) dominate.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from coordgan_cli.models.layers import ConvLayer, EqualLinear, ResBlock


class Encoder(nn.Module):
    """``forward(images (B, 3, H, W) in [-1, 1]) -> (w_structure (B, D), w_texture_plus (B, n_latent, D))``.

    Images of another size are resized (area / bilinear) to ``size`` first.
    """

    def __init__(self, size: int = 128, channels: Sequence[int] = (32, 64, 128, 256, 512),
                 structure_channels: int = 64, texture_channels: Sequence[int] = (1024, 2048),
                 latent_dim: int = 512, n_latent: int = 12) -> None:
        super().__init__()
        channels = list(channels)
        if len(channels) < 1:
            raise ValueError("encoder needs at least one width")
        n_down = len(channels) - 1
        if size % (2 ** (n_down + len(texture_channels))):
            raise ValueError(f"encoder size {size} is not divisible by 2^{n_down + len(texture_channels)}")
        self.size = size
        self.latent_dim = latent_dim
        self.n_latent = n_latent
        trunk: list[nn.Module] = [ConvLayer(3, channels[0], 1)]
        trunk += [ResBlock(channels[i], channels[i + 1]) for i in range(n_down)]
        self.trunk = nn.Sequential(*trunk)
        c = channels[-1]
        spatial = size // 2 ** n_down
        self.structure_convs = nn.Sequential(ConvLayer(c, c, 1), ConvLayer(c, structure_channels, 1, activate=False))
        self.structure_fc = EqualLinear(structure_channels * spatial * spatial, latent_dim)
        tex: list[nn.Module] = []
        for t in texture_channels:
            tex.append(ConvLayer(c, t, 3, downsample=True))
            c = t
        self.texture_convs = nn.Sequential(*tex)
        self.texture_heads = nn.ModuleList(EqualLinear(c, latent_dim) for _ in range(n_latent))

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, size/2^n, size/2^n) shared features."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.size, self.size):
            big = images.shape[-1] > self.size
            images = F.interpolate(images, size=(self.size, self.size), mode="area" if big else "bilinear",
                                   **({} if big else {"align_corners": False}))
        return self.trunk(images)

    def encode_structure(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → structure w (B, D): the cheap path used to get correspondence maps."""
        return self.structure_fc(self.structure_convs(self.trunk_features(images)).flatten(1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.trunk_features(images)
        w_structure = self.structure_fc(self.structure_convs(feats).flatten(1))
        t = self.texture_convs(feats).mean(dim=(2, 3))
        w_texture_plus = torch.stack([head(t) for head in self.texture_heads], dim=1)
        return w_structure, w_texture_plus
