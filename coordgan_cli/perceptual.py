"""Perceptual distance backends (DESIGN §3, §7), one interface: ``build_perceptual(name, device)``.

Every backend returns a frozen module in eval mode (dropout off, no gradients to its weights;
gradients still flow to the inputs) whose ``forward(x (B, 3, H, W), y (B, 3, H, W)) -> (B,)``
takes images in [-1, 1] and gives one distance per sample.

- ``lpips-vgg`` / ``lpips-alex``: the ``lpips`` package (the paper's choice). Its linear layers ship
  with the package, but the ImageNet backbone is a torchvision file normally downloaded at first
  use; offline that download fails, so the file is looked for first and its absence is one clear
  error naming the file and the folder to put it in.
- ``stlpips-vgg`` / ``stlpips-alex``: shift-tolerant LPIPS (``stlpips-pytorch``), whose complete
  weights ship inside the wheel: works offline.
- ``random-tiny``: a small random-weight LPIPS-like network for tests only; never a default.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from coordgan_cli.errors import UserError

BACKENDS = ("lpips-vgg", "lpips-alex", "stlpips-vgg", "stlpips-alex", "random-tiny")
OFFLINE_DEFAULT = "stlpips-vgg"


class PerceptualDistance(nn.Module):
    """A frozen perceptual network; ``forward(x, y) -> (B,)`` distances for inputs in [-1, 1]."""

    def __init__(self, name: str, net: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualDistance":
        # Always eval: a parent's .train() must not switch dropout back on (a defect of the reference).
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"perceptual distance expects two (B, 3, H, W) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.net(x, y).reshape(x.shape[0])

    def extra_repr(self) -> str:
        return f"backend={self.name!r}"


class RandomTinyLPIPS(nn.Module):
    """Tests only: three random conv stages (fixed seed), unit-normalised features, mean squared
    difference per stage, summed. Zero for identical inputs, smooth, cheap."""

    def __init__(self, seed: int = 0, channels: tuple[int, ...] = (8, 16, 16)) -> None:
        super().__init__()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.convs = nn.ModuleList()
        c_in = 3
        for c in channels:
            conv = nn.Conv2d(c_in, c, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (c_in * 9) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
            c_in = c

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for conv in self.convs:
            x, y = F.leaky_relu(conv(x), 0.2), F.leaky_relu(conv(y), 0.2)
            nx = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
            ny = y / (y.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (nx - ny).square().sum(1).mean(dim=(1, 2))
        return total


def torchvision_backbone_file(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights the ``lpips`` package needs for ``net`` (vgg|alex)."""
    from torchvision import models

    weights = models.VGG16_Weights.IMAGENET1K_V1 if net == "vgg" else models.AlexNet_Weights.IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _build_lpips(net: str) -> nn.Module:
    path = torchvision_backbone_file(net)
    if not path.is_file():
        from torchvision import models

        weights = models.VGG16_Weights.IMAGENET1K_V1 if net == "vgg" else models.AlexNet_Weights.IMAGENET1K_V1
        raise UserError(
            f"perceptual backend lpips-{net} needs torchvision's ImageNet {net} weights, which are not on this "
            f"machine: place {path.name} (from {weights.url}) at {path} (or set TORCH_HOME), or use the offline "
            f"backend with --set losses.perceptual={OFFLINE_DEFAULT}"
        )
    import lpips

    # pnet_rand: build the backbone without torchvision's download path; its weights are loaded
    # below from the file found above, with weights_only=True.
    # use_dropout=True: the shipped linear weights are stored under that layout (dropout sits at
    # index 0); the module is kept in eval mode, so dropout never acts.
    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, use_dropout=True, verbose=False)
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    _load_linear_layers(model, lin_path, f"lpips {net}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated / foreign file: say which one
        raise UserError(f"{path}: not a readable torchvision weight file ({exc.__class__.__name__}); delete it and place a fresh copy") from exc
    target = {}
    for slice_name, block in model.net.named_children():
        for index, layer in block.named_children():
            for pname, _ in layer.named_parameters(recurse=False):
                key = f"features.{index}.{pname}"
                if key not in state:
                    raise UserError(f"{path}: not the torchvision {net} ImageNet weights (no {key})")
                target[f"{slice_name}.{index}.{pname}"] = state[key]
    model.net.load_state_dict(target, strict=True)
    return model


@contextlib.contextmanager
def _stub_modules(names: dict[str, str]) -> Iterator[None]:
    """stlpips-pytorch imports IPython.embed and torchsummary.summary at import time without
    declaring them and never calls them while computing a distance; provide inert stand-ins for
    the import only when the real packages are absent, then remove them again."""
    added = []
    for module, attr in names.items():
        try:
            importlib.import_module(module)
        except ImportError:
            stub = types.ModuleType(module)
            setattr(stub, attr, lambda *args, **kwargs: None)
            sys.modules[module] = stub
            added.append(module)
    try:
        yield
    finally:
        for module in added:
            sys.modules.pop(module, None)


def _build_stlpips(net: str) -> nn.Module:
    with _stub_modules({"IPython": "embed", "torchsummary": "summary"}):
        try:
            stlpips = importlib.import_module("stlpips_pytorch.stlpips")
        except ImportError as exc:
            raise UserError(f"perceptual backend stlpips-{net} needs the stlpips-pytorch package: {exc}") from exc
    model = stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=False, use_dropout=True, verbose=False)
    path = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    _load_linear_layers(model, path, f"stlpips {net}", whole=True)
    return model


def _load_linear_layers(model: nn.Module, path: Path, what: str, whole: bool = False) -> None:
    """Load a shipped LPIPS weight file strictly: every tensor must fit, and every parameter of the
    linear layers (and, with ``whole``, of the backbone too) must be in the file."""
    if not path.is_file():
        raise UserError(f"{what}: weight file {path} is missing; reinstall the package that ships it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    # `lins.k.*` are aliases of `link.*` in these modules; only the `link` names are stored.
    needed = [k for k in own if not k.startswith("lins.") and (whole or k.startswith("lin"))
              and not k.startswith("scaling_layer.")]
    missing = [k for k in needed if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise UserError(f"{path}: weights do not fit the {what} network (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, wrong shape {bad[:3]})")
    model.load_state_dict(state, strict=False)


def build_perceptual(name: str, device: torch.device | str | None = None) -> PerceptualDistance:
    """A frozen, eval-mode perceptual distance on ``device``: ``(x, y) -> (B,)``, inputs in [-1, 1]."""
    if name == "lpips-vgg":
        net = _build_lpips("vgg")
    elif name == "lpips-alex":
        net = _build_lpips("alex")
    elif name == "stlpips-vgg":
        net = _build_stlpips("vgg")
    elif name == "stlpips-alex":
        net = _build_stlpips("alex")
    elif name == "random-tiny":
        net = RandomTinyLPIPS()
    else:
        raise UserError(f"unknown perceptual backend {name!r}: use one of {', '.join(BACKENDS)}")
    module = PerceptualDistance(name, net)
    return module.to(device) if device is not None else module
