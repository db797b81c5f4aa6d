"""Mapping network: z → w (DESIGN §2: pixel norm, then equalised linear layers with lr multiplier)."""

from __future__ import annotations

import torch
from torch import nn

from coordgan_cli.models.layers import EqualLinear, PixelNorm


class MappingNetwork(nn.Module):
    """Pixel norm then ``n_layers`` EqualLinear(latent_dim → latent_dim, lr_mul) with leaky ReLU 0.2·√2.

    ``forward(z (B, latent_dim)) -> w (B, latent_dim)``.
    """

    def __init__(self, latent_dim: int, n_layers: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(latent_dim, latent_dim, lr_mul=lr_mul, activation=True) for _ in range(n_layers)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"mapping network expects z of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.net(z)
