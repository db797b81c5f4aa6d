"""The ``Backbone`` interface, hypercolumn assembly and the name → loader registry."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from coordgan_cli.errors import UserError


class Backbone(nn.Module):
    """A frozen image network exposing named intermediate layers.

    Subclasses implement ``layer_outputs(x, names)`` on already-normalised input and set
    ``available_layers`` (name → nominal stride, the input pixels per output position).

    Attributes:
        name: registry name.
        layers: the layers the hypercolumn is built from, shallow to deep.
        stride: pixels of the input per hypercolumn position.
        min_size: the smallest input side the chosen layers accept (at least 32).
    """

    name: str = "backbone"
    available_layers: dict[str, int] = {}
    layer_min_sizes: dict[str, int] = {}  # name → smallest input side that layer accepts (if above 32)

    def __init__(self, layers: Sequence[str], stride: int) -> None:
        super().__init__()
        unknown = [n for n in layers if n not in self.available_layers]
        if unknown or not layers:
            raise UserError(f"backbone {self.name}: unknown layers {unknown or '[]'}; "
                            f"choose from {', '.join(self.available_layers)}")
        self.layers = list(layers)
        self.stride = int(stride)

    # -- to implement -------------------------------------------------------------------------
    def normalise_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] → the network's input convention."""
        raise NotImplementedError

    def layer_outputs(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        """The (B, C_l, h_l, w_l) activations of ``names`` (in that order) for normalised ``x``."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def min_size(self) -> int:
        return max([32] + [self.layer_min_sizes.get(n, 32) for n in self.layers])

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the hypercolumn grid for an (H, W) input: ceil(H / stride), ceil(W / stride)."""
        return max(1, math.ceil(height / self.stride)), max(1, math.ceil(width / self.stride))

    @property
    def channels(self) -> int:
        """C of ``features``: the summed widths of the chosen layers."""
        return sum(self.layer_channels[n] for n in self.layers)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Hypercolumns: (B, 3, H, W) RGB in [0, 1] → (B, C, ceil(H/stride), ceil(W/stride)) float32.

        Each layer is bilinearly resized to the grid, L2-normalised over its channels at every
        position, then concatenated (so every layer contributes unit norm and the whole vector
        has norm √len(layers)).
        """
        _check_images(images)
        size = self.grid_size(images.shape[-2], images.shape[-1])
        outs = self.layer_outputs(self.normalise_input(images.float()), self.layers)
        cols = [F.normalize(F.interpolate(o.float(), size=size, mode="bilinear", align_corners=False), dim=1)
                for o in outs]
        return torch.cat(cols, dim=1)

    @torch.inference_mode()
    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Global descriptor: (B, 3, H, W) RGB in [0, 1] → (B, D) float32, L2-normalised.

        The deepest available layer, average-pooled over positions.
        """
        _check_images(images)
        deepest = list(self.available_layers)[-1]
        out = self.layer_outputs(self.normalise_input(images.float()), [deepest])[0]
        return F.normalize(out.float().mean(dim=(2, 3)), dim=1)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")


# name → (loader(weights, device, layers, stride) -> Backbone, needs a weights file, hint)
BACKBONES: dict[str, tuple[Callable[..., Backbone], bool, str]] = {}


def register(name: str, *, needs_weights: bool, hint: str = ""):
    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES[name] = (fn, needs_weights, hint)
        return fn

    return deco


def backbone_names() -> list[str]:
    _ensure_registered()
    return sorted(BACKBONES)


def _ensure_registered() -> None:
    # Importing the modules fills BACKBONES (kept lazy so `import coordgan_cli.backbones` is cheap).
    from coordgan_cli.backbones import dinov2, inception, torchvision_nets  # noqa: F401


def load_backbone(name: str, weights: Optional[str | Path] = None, device: torch.device | str = "cpu", *,
                  layers: Optional[Sequence[str]] = None, stride: Optional[int] = None) -> Backbone:
    """A frozen backbone in eval mode on ``device``.

    Args:
        name: one of ``backbone_names()``.
        weights: state-dict file for the backbones that need one (``resnet50`` …); the shipped
            ``inception`` ignores it unless given (then it must be a TorchScript file).
        layers: layers for the hypercolumn (default: the backbone's own choice).
        stride: hypercolumn grid stride in input pixels (default: the backbone's own choice).

    Raises UserError for an unknown name, a missing or unreadable weights file, or unknown layers.
    """
    _ensure_registered()
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(sorted(BACKBONES))}")
    loader, needs_weights, hint = BACKBONES[name]
    if needs_weights and weights is None:
        raise UserError(f"backbone {name} needs a weights file: pass --backbone-weights FILE ({hint}); "
                        "nothing is downloaded at run time")
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"{weights}: backbone weights file not found; place the {name} weights there ({hint})")
    model = loader(weights=None if weights is None else Path(weights), layers=layers, stride=stride)
    model.eval().requires_grad_(False)
    return model.to(torch.device(device))


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path`` (weights_only), unwrapping {"state_dict"|"model": ...} and
    stripping a DataParallel "module." prefix. UserError naming the file when unreadable."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: cannot read {name} weights ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path}: not a {name} state dict (expected a mapping of names to tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in data.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str, *,
              ignore: Callable[[str], bool] = lambda k: False, assign: bool = False) -> None:
    """Load ``state`` strictly (keys the features never use, e.g. a classifier head, may be
    absent or extra when ``ignore(key)``); a mismatch is a UserError naming the file.

    ``assign=True`` puts the file's tensors in place of the model's (for a model built on the
    meta device; then no ignored key may be missing, and the tensors keep the file's dtype)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not ignore(k)]
    unexpected = [k for k in state if k not in own and not ignore(k)]
    bad_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        raise UserError(f"{path}: not {name} weights ({'; '.join(parts)})")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=assign)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{name}: tensors {left[:3]} were built on the meta device and not in the file")
