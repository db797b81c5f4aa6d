"""Structure / texture swap grids (the job behind ``coordgan swap``).

Layout (tile = the generator's output size, 2-pixel white gaps)::

                 [  ]      [  ]      [texture 1] [texture 2] …
    [structure 1] [map 1]  G(s1, t1)  G(s1, t2)   …
    [structure 2] [map 2]  G(s2, t1)  G(s2, t2)   …

Along a row the structure (layout, pose) stays and the texture (colours, appearance) changes;
down a column the texture stays. ``map i`` is the correspondence map of structure i coloured
x → red, y → green: equal colours are the same semantic point. Sources are real images (encoded
by the encoder) or ``seed:N`` (z_structure then z_texture drawn from
``torch.Generator().manual_seed(N)``; its picture is G(z_structure, z_texture)). Synthesis uses
the generator's constant noise, so a grid is a pure function of checkpoint and sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from coordgan_cli.errors import UserError
from coordgan_cli.inference import CorrespondenceModel, colourise_correspondence, images_to_tensor, tensor_to_images
from coordgan_cli.io.images import read_image

_SEED = re.compile(r"^seed:(\d+)$")
GAP = 2


@dataclass
class Source:
    """One swap source: its label, structure w (1, D), texture W+ (1, L, D), picture uint8 (S, S, 3)."""

    label: str
    w_structure: torch.Tensor
    w_texture_plus: torch.Tensor
    picture: np.ndarray


def parse_seed(text: str) -> int | None:
    """``seed:N`` → N; anything else → None (a path)."""
    m = _SEED.match(text.strip())
    return int(m.group(1)) if m else None


@torch.inference_mode()
def load_source(model: CorrespondenceModel, text: str) -> Source:
    """A ``seed:N`` or an image path as a :class:`Source` (real images need an encoder checkpoint)."""
    size = model.generator.size
    seed = parse_seed(text)
    if seed is not None:
        w_s, w_plus = model.sample_codes(seed)
        picture = tensor_to_images(model.synthesize(w_s, w_plus))[0]
        return Source(text, w_s, w_plus, picture)
    if text.startswith("seed:"):
        raise UserError(f"{text!r}: expected seed:N with N a non-negative integer")
    if model.encoder is None:
        raise UserError(f"{text}: a real image needs an encoder checkpoint, but {model.checkpoint_path} is a generator "
                        "checkpoint (use seed:N sources, or train an encoder with coordgan train-encoder)")
    image = read_image(Path(text))
    w_s, w_plus = model.encode_tensor([image])
    picture = tensor_to_images(images_to_tensor([image], size, model.device))[0]
    return Source(text, w_s, w_plus, picture)


def _pad(tile: np.ndarray) -> np.ndarray:
    return np.pad(tile, ((0, GAP), (0, GAP), (0, 0)), constant_values=255)


@torch.inference_mode()
def swap_grid(model: CorrespondenceModel, structures: Sequence[Source], textures: Sequence[Source]) -> np.ndarray:
    """uint8 grid of the module doc: (1 + rows) × (2 + columns) tiles."""
    if not structures or not textures:
        raise UserError("swap needs at least one --structure and one --texture source")
    size = model.generator.size
    blank = np.full((size, size, 3), 255, np.uint8)
    w_plus = torch.cat([t.w_texture_plus for t in textures])
    lines = [np.concatenate([_pad(blank), _pad(blank)] + [_pad(t.picture) for t in textures], axis=1)]
    for s in structures:
        corr = model.generator.correspondence(s.w_structure)
        cells = model.generator.synthesize(corr.expand(len(textures), -1, -1, -1), w_plus, noise="const")
        # The warp MLP is continuous: draw the map directly at the tile size.
        cmap = colourise_correspondence(model.generator.correspondence(s.w_structure, size)[0].float().cpu().numpy())
        tiles = [s.picture, cmap] + tensor_to_images(cells)
        lines.append(np.concatenate([_pad(t) for t in tiles], axis=1))
    return np.concatenate(lines, axis=0)
