"""Discriminators (DESIGN §2): StyleGAN2's residual image discriminator and the patch
discriminator of the structure-swap constraint (Swapping-Autoencoder style)."""

from __future__ import annotations

import math

import torch
from torch import nn

from coordgan_cli.models.layers import ConvLayer, EqualLinear, ResBlock


def discriminator_channels(resolution: int, channel_multiplier: int, max_channels: int) -> int:
    """StyleGAN2's width table: 512 up to 32 px, then 256·m at 64, 128·m at 128, … capped at max_channels."""
    return max(1, min(max_channels, (16384 // resolution) * channel_multiplier))


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the mean over features of the std over groups of samples. (N, C, H, W) → (N, C+1, H, W)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    while n % g:  # the largest group size <= group_size that divides the batch
        g -= 1
    y = x.reshape(g, n // g, 1, c, h, w)
    y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8)  # (n/g, 1, c, h, w)
    y = y.mean(dim=(2, 3, 4), keepdim=True).squeeze(2)  # (n/g, 1, 1, 1)
    y = y.repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator. ``forward(images (B, 3, size, size)) -> logits (B, 1)``.

    From-RGB 1×1, residual downsampling blocks to 4×4, minibatch stddev, 3×3 conv, two linear layers.
    """

    def __init__(self, size: int = 128, channel_multiplier: int = 2, max_channels: int = 512) -> None:
        super().__init__()
        log_size = int(round(math.log2(size)))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"discriminator size must be a power of two >= 8, got {size}")
        self.size = size
        ch = lambda r: discriminator_channels(r, channel_multiplier, max_channels)  # noqa: E731
        blocks: list[nn.Module] = [ConvLayer(3, ch(size), 1)]
        for i in range(log_size, 2, -1):
            blocks.append(ResBlock(ch(2 ** i), ch(2 ** (i - 1))))
        self.convs = nn.Sequential(*blocks)
        c4 = ch(4)
        self.final_conv = ConvLayer(c4 + 1, c4, 3)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 4 * 4, c4, activation=True), EqualLinear(c4, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images)
        x = self.final_conv(minibatch_stddev(x))
        return self.final_linear(x.flatten(1))


class PatchDiscriminator(nn.Module):
    """Patch discriminator of the structure-swap constraint.

    Trunk over (N, 3, patch_size, patch_size) crops: a 3×3 from-RGB conv, residual downsampling
    blocks to 4×4 (widths min(channels, channels·8/r) at resolution r: 64, 128, 256, 256 for 32 px
    crops and channels = 256), then a 3×3 unpadded conv → (N, channels, 2, 2) features. The pair
    classifier concatenates the flattened mean feature of the reference crops with the feature of
    one crop: Linear(2·4·channels → 4·channels), leaky ReLU, Linear(→ 1). At the paper size this
    is 4.53 M parameters (DESIGN §2: ≈ 4.5 M).
    """

    def __init__(self, patch_size: int = 32, channels: int = 256) -> None:
        super().__init__()
        log_size = int(round(math.log2(patch_size)))
        if 2 ** log_size != patch_size or patch_size < 8:
            raise ValueError(f"patch size must be a power of two >= 8, got {patch_size}")
        self.patch_size = patch_size
        ch = lambda r: max(1, min(channels, channels * 8 // r))  # noqa: E731
        blocks: list[nn.Module] = [ConvLayer(3, ch(patch_size), 3)]
        for i in range(log_size, 2, -1):
            blocks.append(ResBlock(ch(2 ** i), ch(2 ** (i - 1))))
        blocks.append(ConvLayer(ch(4), channels, 3))
        self.convs = nn.Sequential(*blocks)
        # 3×3 conv "valid" on 4×4 gives 2×2 (ConvLayer pads by default, so replace its padding).
        blocks[-1][0].padding = 0
        self.feature_dim = channels * 2 * 2
        self.classifier = nn.Sequential(
            EqualLinear(2 * self.feature_dim, 4 * channels, activation=True), EqualLinear(4 * channels, 1)
        )

    def extract_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, p, p) or (B, T, 3, p, p) crops → features (N, channels, 2, 2) or (B, T, channels, 2, 2)."""
        if crops.ndim == 5:
            b, t = crops.shape[:2]
            return self.convs(crops.flatten(0, 1)).unflatten(0, (b, t))
        return self.convs(crops)

    def discriminate_features(self, ref_features_mean: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Mean reference feature (N, channels, 2, 2) + crop feature (N, channels, 2, 2) → logits (N, 1)."""
        return self.classifier(torch.cat([ref_features_mean.flatten(1), features.flatten(1)], dim=1))

    def forward(self, reference_crops: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """References (B, T, 3, p, p) and crops (B, K, 3, p, p) → logits (B·K, 1) (each crop vs its image's mean reference)."""
        ref = self.extract_features(reference_crops).mean(dim=1)  # (B, C, 2, 2)
        feats = self.extract_features(crops)  # (B, K, C, 2, 2)
        k = feats.shape[1]
        ref = ref[:, None].expand(-1, k, -1, -1, -1)
        return self.discriminate_features(ref.flatten(0, 1), feats.flatten(0, 1))
