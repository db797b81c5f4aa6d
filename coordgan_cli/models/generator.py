"""The CoordGAN generator (DESIGN §2).

structure z ─ mapping_structure ─ w_s ─ warp ─ correspondence map (B, 2, S, S)
texture z   ─ mapping_texture   ─ w_t ─ broadcast ─ W+ (B, n_latent, D)
correspondence map + W+ ─ synthesis ─ image (B, 3, size, size)

The synthesis network sees the correspondence map through a Fourier positional encoding (a
learnable 1×1 conv followed by sin) and, raw, concatenated to the input of every modulated
layer at the canonical resolution. Optional high-resolution blocks upsample beyond it.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import torch
from torch import nn

from coordgan_cli.models.layers import StyledConv, ToRGB
from coordgan_cli.models.mapping import MappingNetwork
from coordgan_cli.models.warp import BackwardMLP, CoordinateWarp

NoiseMode = Literal["random", "const", "none"]
NoiseArg = Union[None, str, Sequence[Optional[torch.Tensor]]]

# Fixed seed of the constant noise buffers: the same architecture always gets the same buffers.
_CONST_NOISE_SEED = 20220330


class FourierEncoding(nn.Module):
    """sin(1×1 conv(map)): (B, 2, H, W) → (B, channels, H, W).

    Frequencies start low (std π/2 per coordinate times ``scale``: at scale 1 about a quarter to
    one cycle across the canonical square) so an untrained generator already sees a smooth,
    informative code. A larger ``scale`` draws finer patterns, in which a displacement of the map
    by a pixel or two moves edges rather than a smooth gradient.
    """

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, channels, 1)
        with torch.no_grad():
            self.proj.weight.normal_(0.0, scale * math.pi / 2)
            self.proj.bias.uniform_(-math.pi, math.pi)

    def forward(self, correspondence_map: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.proj(correspondence_map))


class SynthesisNetwork(nn.Module):
    """Modulated synthesis from a correspondence map and W+.

    Layer k (StyledConv) uses w[k]; the ToRGB following layer k uses w[k+1] (StyleGAN2's
    convention), so ``n_latent = number of StyledConvs + 1``. Layout at the canonical resolution:
    an input StyledConv (pe_channels + 2 → channels) with a ToRGB, then ``n_layers`` StyledConvs
    (channels + 2 → channels) with a ToRGB after every second one (and after the last). Each
    high-resolution block: an upsampling StyledConv, a StyledConv and a ToRGB whose skip is
    upsampled; these do not see the correspondence map.
    """

    def __init__(self, coord_size: int, style_dim: int, pe_channels: int, channels: int, n_layers: int,
                 highres_channels: Sequence[int] = (), pe_scale: float = 1.0) -> None:
        super().__init__()
        self.coord_size = coord_size
        self.pe = FourierEncoding(pe_channels, pe_scale)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleDict()  # key: index of the conv it follows
        self.convs.append(StyledConv(pe_channels + 2, channels, 3, style_dim))
        self.to_rgbs["0"] = ToRGB(channels, style_dim)
        for i in range(1, n_layers + 1):
            self.convs.append(StyledConv(channels + 2, channels, 3, style_dim))
            if i % 2 == 0 or i == n_layers:
                self.to_rgbs[str(i)] = ToRGB(channels, style_dim)
        self.n_map_layers = len(self.convs)
        in_ch = channels
        self.noise_sizes = [coord_size] * len(self.convs)
        res = coord_size
        for ch in highres_channels:
            res *= 2
            self.convs.append(StyledConv(in_ch, ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(ch, ch, 3, style_dim))
            self.to_rgbs[str(len(self.convs) - 1)] = ToRGB(ch, style_dim, upsample_skip=True)
            self.noise_sizes += [res, res]
            in_ch = ch
        self.size = res
        self.n_latent = len(self.convs) + 1
        # Constant noise, one map per StyledConv: part of the state dict, so a checkpoint carries it
        # and `noise = "const"` gives identical images for identical codes on any machine.
        # Drawn on the CPU (the same numbers everywhere), then placed on the device being built on.
        gen = torch.Generator(device="cpu").manual_seed(_CONST_NOISE_SEED)
        target = torch.get_default_device()
        for k, r in enumerate(self.noise_sizes):
            noise = torch.randn(1, 1, r, r, generator=gen, device="cpu")
            self.register_buffer(f"noise_{k}", noise.to(target))

    def const_noise(self) -> list[torch.Tensor]:
        return [getattr(self, f"noise_{k}") for k in range(len(self.convs))]

    def make_noise(self, mode: str, batch: int, device: torch.device, dtype: torch.dtype,
                   generator: Optional[torch.Generator] = None) -> list[Optional[torch.Tensor]]:
        """Noise maps for ``mode`` random (fresh N(0,1), from ``generator`` if given), const or none."""
        if mode == "none":
            return [None] * len(self.convs)
        if mode == "const":
            return [n.to(device=device, dtype=dtype) for n in self.const_noise()]
        if mode == "random":
            return [torch.randn(batch, 1, r, r, device=device, dtype=dtype, generator=generator)
                    for r in self.noise_sizes]
        raise ValueError(f"unknown noise mode {mode!r}: use random, const or none")

    def forward(self, correspondence_map: torch.Tensor, w_plus: torch.Tensor,
                noise: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        c = correspondence_map
        b, _, h, w = c.shape
        if w_plus.ndim != 3 or w_plus.shape[0] != b or w_plus.shape[1] != self.n_latent:
            raise ValueError(f"expected W+ of shape ({b}, {self.n_latent}, D), got {tuple(w_plus.shape)}")
        if len(noise) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} noise maps, got {len(noise)}")
        x = self.pe(c)
        skip = None
        for k, conv in enumerate(self.convs):
            if k < self.n_map_layers:
                x = torch.cat([x, c], dim=1)
            n = noise[k]
            if n is not None and n.shape[-2:] != x.shape[-2:] and k < self.n_map_layers:
                # A map evaluated at another size than the canonical one: resample the noise.
                n = torch.nn.functional.interpolate(n, size=(h, w), mode="nearest")
            x = conv(x, w_plus[:, k], n)
            rgb = self.to_rgbs[str(k)] if str(k) in self.to_rgbs else None
            if rgb is not None:
                skip = rgb(x, w_plus[:, k + 1], skip)
        return skip


class Generator(nn.Module):
    """CoordGAN generator with separate structure / texture mapping networks.

    Arguments are the model's sizes (see ``ModelConfig``): ``size`` output pixels, ``coord_size``
    canonical grid, ``latent_dim`` z/w size, ``mapping_layers`` / ``mapping_lr_mul`` of each mapping
    network, ``warp_hidden`` / ``warp_layers`` of the warping MLP, ``pe_channels`` Fourier
    features, ``channels`` / ``synthesis_layers`` of the modulated convs, ``highres_channels`` of
    the upsampling blocks (size = coord_size · 2^len), ``noise`` mode, ``backward_mlp``, ``warp_skip``
    (the warping MLP starts near the identity map; see ``CoordinateWarp``), ``warp_code_gain`` (initial
    scale of the structure code in the warping MLP: how far apart untrained maps of different codes are),
    ``warp_affine`` / ``warp_affine_init`` (a global affine head before the warping MLP and the initial
    spread of its six parameters), ``warp_residual`` (bound on the warping MLP's offset; 0 = none).
    """

    def __init__(self, size: int = 128, coord_size: int = 128, latent_dim: int = 512, mapping_layers: int = 8,
                 mapping_lr_mul: float = 0.01, warp_hidden: int = 512, warp_layers: int = 3,
                 pe_channels: int = 512, channels: int = 512, synthesis_layers: int = 10,
                 highres_channels: Sequence[int] = (), noise: NoiseMode = "random",
                 backward_mlp: bool = False, warp_skip: bool = False,
                 warp_code_gain: float = 1.0, pe_scale: float = 1.0, warp_affine: bool = False,
                 warp_affine_init: float = 0.05, warp_residual: float = 0.0) -> None:
        super().__init__()
        if size != coord_size * 2 ** len(highres_channels):
            raise ValueError(f"size {size} != coord_size {coord_size} * 2^{len(highres_channels)}")
        if noise not in ("random", "const", "none"):
            raise ValueError(f"unknown noise mode {noise!r}")
        self.size = size
        self.coord_size = coord_size
        self.latent_dim = latent_dim
        self.noise_mode: str = noise
        self.mapping_structure = MappingNetwork(latent_dim, mapping_layers, mapping_lr_mul)
        self.mapping_texture = MappingNetwork(latent_dim, mapping_layers, mapping_lr_mul)
        self.warp = CoordinateWarp(latent_dim, warp_hidden, warp_layers, skip=warp_skip, code_gain=warp_code_gain,
                                   affine=warp_affine, affine_init=warp_affine_init, residual=warp_residual)
        self.synthesis = SynthesisNetwork(coord_size, latent_dim, pe_channels, channels, synthesis_layers,
                                          highres_channels, pe_scale)
        self.backward_mlp = BackwardMLP(latent_dim, warp_hidden, warp_layers) if backward_mlp else None

    @property
    def n_latent(self) -> int:
        """Number of w vectors in W+ (one per StyledConv, plus one for the last ToRGB)."""
        return self.synthesis.n_latent

    def map_structure(self, z_structure: torch.Tensor) -> torch.Tensor:
        """(B, D) structure z → (B, D) structure w."""
        return self.mapping_structure(z_structure)

    def map_texture(self, z_texture: torch.Tensor) -> torch.Tensor:
        """(B, D) texture z → (B, D) texture w."""
        return self.mapping_texture(z_texture)

    def texture_plus(self, w_texture: torch.Tensor) -> torch.Tensor:
        """(B, D) texture w → (B, n_latent, D) W+ (the same w for every layer)."""
        return w_texture[:, None, :].expand(-1, self.n_latent, -1)

    def correspondence(self, w_structure: torch.Tensor, size: Union[int, tuple[int, int], None] = None) -> torch.Tensor:
        """(B, D) structure w → correspondence map (B, 2, H, W) on an H×W canonical grid (default coord_size)."""
        return self.warp(w_structure, self.coord_size if size is None else size)

    def canonical_estimate(self, correspondence_map: torch.Tensor, w_structure: torch.Tensor) -> torch.Tensor:
        """Backward MLP (CoordGAN-B): (B, 2, H, W) warped coordinates → (B, 2, H, W) canonical ones."""
        if self.backward_mlp is None:
            raise RuntimeError("this generator was built without the backward MLP (model.backward_mlp = false)")
        return self.backward_mlp(correspondence_map, w_structure)

    def synthesize(self, correspondence_map: torch.Tensor, w_plus: torch.Tensor, noise: NoiseArg = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Correspondence map (B, 2, S, S) + W+ (B, n_latent, D) → image (B, 3, size, size), about [-1, 1].

        ``noise``: None = this generator's mode, a mode name, or one map per StyledConv; random
        noise is drawn from ``generator`` when given.
        """
        if noise is None or isinstance(noise, str):
            noise = self.synthesis.make_noise(noise or self.noise_mode, correspondence_map.shape[0],
                                              correspondence_map.device, correspondence_map.dtype, generator)
        return self.synthesis(correspondence_map, w_plus, noise)

    def forward(self, z_structure: torch.Tensor, z_texture: torch.Tensor, noise: NoiseArg = None,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D), (B, D) → (image (B, 3, size, size), correspondence map (B, 2, coord_size, coord_size))."""
        w_s = self.map_structure(z_structure)
        w_t = self.map_texture(z_texture)
        corr = self.correspondence(w_s)
        return self.synthesize(corr, self.texture_plus(w_t), noise, generator), corr
