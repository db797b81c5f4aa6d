"""Sample grids for watching a run: do parts line up across samples?

Layout (``n`` structure codes × ``n`` texture codes, EMA generator, fixed codes):

    row i:  [correspondence map of s_i] [G(s_i, t_1)] [G(s_i, t_2)] … [G(s_i, t_n)]

Along a row the structure is the same and the texture changes; down a column the texture is
the same and the structure changes. The correspondence map is coloured x → red, y → green, so
the same colour in two rows marks the same semantic point: a good model paints eyes, nose and
mouth with the same colours whatever the structure code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def colour_correspondence(correspondence_map: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) in [-1, 1] → (B, 3, H, W) in [0, 1]: red = x, green = y, blue = 0.25."""
    rg = (correspondence_map.clamp(-1, 1) + 1) / 2
    blue = torch.full_like(rg[:, :1], 0.25)
    return torch.cat([rg, blue], dim=1)


@torch.no_grad()
def sample_grid(generator: nn.Module, z_structure: torch.Tensor, z_texture: torch.Tensor) -> np.ndarray:
    """uint8 (n·S, (n+1)·S, 3) grid of the layout above; ``z_*``: (n, D) on the generator's device.

    Noise is the generator's constant noise (none if it has none), so grids of one run differ
    only by training progress."""
    n = z_structure.shape[0]
    w_s = generator.map_structure(z_structure)
    w_plus = generator.texture_plus(generator.map_texture(z_texture))
    corr = generator.correspondence(w_s)
    rows = []
    for i in range(n):
        images = generator.synthesize(corr[i:i + 1].expand(n, -1, -1, -1), w_plus, noise="none" if generator.noise_mode == "none" else "const")
        images = ((images.clamp(-1, 1) + 1) / 2)
        size = images.shape[-1]
        cmap = colour_correspondence(corr[i:i + 1])
        if cmap.shape[-1] != size:
            cmap = F.interpolate(cmap, size=(size, size), mode="nearest")
        rows.append(torch.cat([cmap, images], dim=0))
    tiles = torch.stack(rows)  # (n, n+1, 3, S, S)
    r, c, _, s, _ = tiles.shape
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(r * s, c * s, 3)
    return (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
