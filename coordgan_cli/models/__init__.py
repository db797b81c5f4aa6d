"""The CoordGAN model core (plain PyTorch): generator, discriminators, encoder.

``build_networks(cfg)`` builds every network of a recipe's ``[model]`` section;
``parameter_counts(cfg)`` counts their parameters without allocating memory (meta device).
Constructors take explicit typed arguments; the ``*_kwargs(cfg)`` helpers map a ``ModelConfig``
onto them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coordgan_cli.config import ModelConfig
from coordgan_cli.models.discriminator import Discriminator, PatchDiscriminator
from coordgan_cli.models.encoder import Encoder
from coordgan_cli.models.generator import Generator
from coordgan_cli.models.warp import BackwardMLP, CoordinateWarp, canonical_grid, canonical_grid_map

__all__ = [
    "BackwardMLP", "CoordinateWarp", "Discriminator", "Encoder", "Generator", "PatchDiscriminator",
    "build_networks", "canonical_grid", "canonical_grid_map", "count_parameters", "discriminator_kwargs",
    "encoder_kwargs", "generator_kwargs", "parameter_counts", "patch_discriminator_kwargs",
]


def generator_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(
        size=cfg.size, coord_size=cfg.coord_size, latent_dim=cfg.latent_dim, mapping_layers=cfg.mapping_layers,
        mapping_lr_mul=cfg.mapping_lr_mul, warp_hidden=cfg.warp_hidden, warp_layers=cfg.warp_layers,
        pe_channels=cfg.pe_channels, channels=cfg.synthesis_channels, synthesis_layers=cfg.synthesis_layers,
        highres_channels=tuple(cfg.highres_channels), noise=cfg.noise, backward_mlp=cfg.backward_mlp,
        warp_skip=cfg.warp_skip, warp_code_gain=cfg.warp_code_gain, pe_scale=cfg.pe_scale,
        warp_affine=cfg.warp_affine, warp_affine_init=cfg.warp_affine_init, warp_residual=cfg.warp_residual,
    )


def discriminator_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(size=cfg.size, channel_multiplier=cfg.d_channel_multiplier, max_channels=cfg.d_max_channels)


def patch_discriminator_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(patch_size=cfg.patch_size, channels=cfg.patch_channels)


def n_latent_of(cfg: ModelConfig) -> int:
    """W+ length of the generator of ``cfg``: StyledConvs (1 + synthesis_layers + 2 per high-res block) + 1."""
    return 1 + cfg.synthesis_layers + 2 * len(cfg.highres_channels) + 1


def encoder_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    # The encoder sees images at encoder_size (0: the canonical resolution, as before the field
    # existed); a small recipe with a coarse map grid gives it the full image instead.
    return dict(size=cfg.encoder_size or cfg.coord_size, channels=tuple(cfg.encoder_channels),
                structure_channels=cfg.encoder_structure_channels,
                texture_channels=tuple(cfg.encoder_texture_channels), latent_dim=cfg.latent_dim,
                n_latent=n_latent_of(cfg))


def build_networks(cfg: ModelConfig) -> dict[str, nn.Module]:
    """Every network of a ``[model]`` section: keys generator, discriminator, patch_discriminator, encoder.

    Built on the current default device (wrap in ``with torch.device(...)`` to choose).
    """
    return {
        "generator": Generator(**generator_kwargs(cfg)),
        "discriminator": Discriminator(**discriminator_kwargs(cfg)),
        "patch_discriminator": PatchDiscriminator(**patch_discriminator_kwargs(cfg)),
        "encoder": Encoder(**encoder_kwargs(cfg)),
    }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per network, counted on the meta device (no memory, paper size in milliseconds).

    Keys: generator (= mapping_structure + mapping_texture + warp + synthesis [+ backward]),
    mapping_structure, mapping_texture, warp, synthesis, discriminator, patch_discriminator,
    encoder (left out when the recipe's encoder sizes do not fit its input size), and backward when
    the backward MLP is enabled.
    """
    with torch.device("meta"):
        nets = {"generator": Generator(**generator_kwargs(cfg)),
                "discriminator": Discriminator(**discriminator_kwargs(cfg)),
                "patch_discriminator": PatchDiscriminator(**patch_discriminator_kwargs(cfg))}
        try:
            nets["encoder"] = Encoder(**encoder_kwargs(cfg))
        except ValueError:
            # A generator recipe need not size an encoder (its encoder recipe does): no count then.
            pass
    g = nets["generator"]
    counts = {
        "generator": count_parameters(g),
        "mapping_structure": count_parameters(g.mapping_structure),
        "mapping_texture": count_parameters(g.mapping_texture),
        "warp": count_parameters(g.warp),
        "synthesis": count_parameters(g.synthesis),
    }
    if g.backward_mlp is not None:
        counts["backward"] = count_parameters(g.backward_mlp)
    for name in ("discriminator", "patch_discriminator", "encoder"):
        if name in nets:
            counts[name] = count_parameters(nets[name])
    return counts
