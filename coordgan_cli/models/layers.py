"""StyleGAN2-style building blocks in plain PyTorch (no custom CUDA ops, CPU and GPU alike).

Names follow the field's vocabulary: ``EqualLinear``, ``EqualConv2d``, ``ModulatedConv2d``,
``StyledConv``, ``ToRGB``, ``ConvLayer``, ``ResBlock``. Weights are stored at unit variance and
scaled at run time ("equalised learning rate"), so Adam sees every layer at the same scale.
Blur, up- and downsampling are depthwise convolutions with a fixed binomial kernel.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(x: torch.Tensor, bias: Optional[torch.Tensor] = None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    """``leaky_relu(x + bias) * scale``; ``bias`` (C,) is broadcast over dim 1 of ``x``.

    The √2 gain keeps activations at unit variance through the nonlinearity.
    """
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.view(shape)
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias + leaky ReLU (0.2) with gain √2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """A normalised separable 2-D binomial kernel (K, K) from 1-D taps, e.g. [1, 3, 3, 1]."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k = k[:, None] * k[None, :] if k.ndim == 1 else k
    return k / k.sum()


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Depthwise filtering of (N, C, H, W) with a (K, K) kernel after zero padding (before, after)."""
    c = x.shape[1]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.to(dtype=x.dtype, device=x.device).flip([0, 1]).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


class Blur(nn.Module):
    """Fixed low-pass filter; ``scale`` multiplies the kernel (factor² after zero-insertion upsampling)."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * scale, persistent=False)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel, self.pad)


class Upsample(nn.Module):
    """2× upsampling: zero insertion then a blur with the kernel scaled by 4. (N,C,H,W) → (N,C,2H,2W)."""

    def __init__(self, taps: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * 4, persistent=False)
        p = len(taps) - 2
        self.pad = ((p + 1) // 2 + 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        up = x.new_zeros(n, c, h * 2, w * 2)
        up[:, :, ::2, ::2] = x
        return blur(up, self.kernel, self.pad)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate and an optional learning-rate multiplier.

    (…, in_dim) → (…, out_dim). With ``activation=True`` the bias is added inside a leaky ReLU
    (0.2, gain √2), as in StyleGAN2's mapping network.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """2-D convolution with equalised learning rate. (N, in, H, W) → (N, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class ConvLayer(nn.Sequential):
    """[blur →] EqualConv2d [→ bias + leaky ReLU]; ``downsample`` halves H and W (stride 2 after blur)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 blur_taps: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_taps) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_taps, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels) if bias else nn.LeakyReLU(0.2))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual block of the StyleGAN2 discriminator: two 3×3 convs (second one downsampling) plus a
    1×1 downsampling skip, summed and divided by √2. (N, in, H, W) → (N, out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True,
                 blur_taps: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=downsample, blur_taps=blur_taps)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=downsample, blur_taps=blur_taps,
                              bias=False, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2× upsampling (StyleGAN2).

    ``forward(x (B, in, H, W), style (B, style_dim)) -> (B, out, H', W')``. Implemented by scaling
    the *activations* by the style and the *outputs* by the demodulation factor, which equals the
    per-sample weight modulation exactly but needs no grouped convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_taps: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        # Styles start at 1 so an untrained layer behaves like a plain convolution.
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            p = (len(blur_taps) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + 1, p // 2 + 1), scale=4.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)  # (B, in)
        weight = self.weight * self.scale
        x = x * s[:, :, None, None]
        if self.upsample:
            # Transposed conv with stride 2 then blur: StyleGAN2's upsampling convolution.
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.kernel_size // 2)
        if self.demodulate:
            w2 = weight.square().sum(dim=(2, 3))  # (out, in)
            d = torch.rsqrt(s.square() @ w2.t() + 1e-8)  # (B, out)
            out = out * d[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}")


class NoiseInjection(nn.Module):
    """Adds ``weight * noise``; noise (B or 1, 1, H, W). The weight starts at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight * noise


class StyledConv(nn.Module):
    """ModulatedConv2d (demodulated) → noise injection → bias + leaky ReLU.

    ``forward(x (B, in, H, W), style (B, D), noise (B|1, 1, H', W') | None) -> (B, out, H', W')``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1×1 modulated conv without demodulation to 3 channels, plus the (upsampled) running RGB skip.

    ``forward(x (B, in, H, W), style (B, D), skip (B, 3, H or H/2, …) | None) -> (B, 3, H, W)``.
    """

    def __init__(self, in_channels: int, style_dim: int, upsample_skip: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.upsample = Upsample() if upsample_skip else None

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            if self.upsample is not None:
                skip = self.upsample(skip)
            out = out + skip
        return out


class PixelNorm(nn.Module):
    """Normalises each vector to unit root-mean-square along dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)
