"""ResNets from torchvision's model definitions, with weights from a file the user placed.

torchvision is installed, its architectures are plain PyTorch; only its *weights* would need a
download, so the user supplies them: any torchvision ResNet state dict (e.g. the file
``resnet50-0676ba61.pth`` / ``resnet50-11ad3fa6.pth`` that ``torchvision.models.resnet50(weights=…)``
caches, or a DINO / MoCo / timm ResNet-50 checkpoint with torchvision key names; a wrapping
{"state_dict": …} and "module." prefixes are accepted). The classifier head is not used.

Layers (name: stride): layer1: 4, layer2: 8, layer3: 16, layer4: 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from coordgan_cli.backbones.base import Backbone, load_into, read_state_dict, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
DEFAULT_LAYERS = ("layer2", "layer3", "layer4")
DEFAULT_STRIDE = 8
ARCHITECTURES = {"resnet18": False, "resnet34": False, "resnet50": True, "resnet101": True}  # name → bottleneck


class TorchvisionResNet(Backbone):
    available_layers = STRIDES

    def __init__(self, name: str, net: torch.nn.Module, layers: Sequence[str] = DEFAULT_LAYERS,
                 stride: int = DEFAULT_STRIDE) -> None:
        self.name = name
        expansion = 4 if ARCHITECTURES[name] else 1
        self.layer_channels = {f"layer{i + 1}": 64 * 2 ** i * expansion for i in range(4)}
        super().__init__(layers, stride)
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise_input(self, images: torch.Tensor) -> torch.Tensor:
        return (images.clamp(0, 1) - self.mean) / self.std

    def layer_outputs(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        last = max(int(s[-1]) for s in names)
        got = {}
        for i in range(1, last + 1):
            x = getattr(n, f"layer{i}")(x)
            got[f"layer{i}"] = x
        return [got[s] for s in names]


def _make_loader(arch: str):
    def load(weights: Optional[Path] = None, layers: Optional[Sequence[str]] = None,
             stride: Optional[int] = None) -> TorchvisionResNet:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if weights is not None:
            state = read_state_dict(weights, arch)
            load_into(net, state, weights, arch, ignore=lambda k: k.startswith("fc."))
        return TorchvisionResNet(arch, net, layers or DEFAULT_LAYERS, stride or DEFAULT_STRIDE)

    return load


for _arch in ARCHITECTURES:
    _hint = f"a torchvision {_arch} state dict, e.g. the {_arch}-*.pth file torchvision caches"
    register(_arch, needs_weights=True, hint=_hint)(_make_loader(_arch))
