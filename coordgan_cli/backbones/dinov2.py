"""DINOv2 vision transformers from a checkpoint file the user downloaded.

The architecture is timm's ``VisionTransformer`` (built with ``pretrained=False``-style
construction, so nothing downloads); the weights come from ``--backbone-weights FILE``:

- the official facebookresearch/dinov2 files, e.g. ``dinov2_vits14_pretrain.pth``,
  ``dinov2_vitb14_reg4_pretrain.pth`` (keys ``cls_token``, ``pos_embed``, ``mask_token``,
  ``register_tokens``, ``patch_embed.proj.weight``, ``blocks.N.attn.qkv.weight``,
  ``blocks.N.ls1.gamma``, ``norm.weight`` …), also a training checkpoint's ``teacher``
  (``backbone.`` prefix, chunked ``blocks.C.N.`` keys);
- or timm's state dict of the same model (``vit_small_patch14_dinov2`` …,
  ``vit_small_patch14_reg4_dinov2`` …: ``reg_token``, a position table without the class token).

The size is read from the file (width, depth, registers, position grid; heads are 64 wide in
every DINOv2 size). ``dinov2_vits14``/``vitb14``/``vitl14`` (and ``_reg``) check that the file is
that size; ``dinov2`` takes any DINOv2-layout ViT with 14-px patches (e.g. a fine-tuned one).

Layers ``block0`` … ``block{depth-1}``: the patch tokens after that block, through the final
LayerNorm (as DINOv2's own ``get_intermediate_layers(norm=True)``), reshaped to the patch grid.
Default: the blocks at half, three quarters and the end of the depth (ViT-S/B: block5, block8,
block11). Grid and stride: ``grid_size(H, W)`` is (⌈H/stride⌉, ⌈W/stride⌉) as for every backbone,
and the input is resized to exactly that many 14-px patches (⌈H/stride⌉·14 …), so ``features``
returns the patch grid itself. Default stride 14: a 512-px working image runs at 518 px = 37²
patches, the resolution DINOv2 was trained at, where the position table is used as it is
(other sizes interpolate it, bicubic, as timm's ``dynamic_img_size``). A smaller stride gives a
denser grid by enlarging the input (stride 7: twice the side, four times the tokens).
ImageNet mean/std normalisation. ``descriptor`` is the class token after the final norm.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from coordgan_cli.backbones.base import Backbone, _check_images, load_into, read_state_dict, register
from coordgan_cli.errors import UserError

PATCH = 14
HEAD_WIDTH = 64  # every DINOv2 size: ViT-S 6 heads of 64, ViT-B 12, ViT-L 16, ViT-g 24
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# name → (width, depth, register tokens); the official file names are "<name>_pretrain.pth".
SIZES = {
    "dinov2_vits14": (384, 12, 0), "dinov2_vitb14": (768, 12, 0), "dinov2_vitl14": (1024, 24, 0),
    "dinov2_vits14_reg": (384, 12, 4), "dinov2_vitb14_reg": (768, 12, 4), "dinov2_vitl14_reg": (1024, 24, 4),
}
TIMM_NAMES = {"s": "small", "b": "base", "l": "large"}


def default_layers(depth: int) -> tuple[str, ...]:
    """Blocks at half, three quarters and the end of the depth (12 → block5, block8, block11)."""
    picks = sorted({max(0, depth // 2 - 1), max(0, 3 * depth // 4 - 1), depth - 1})
    return tuple(f"block{i}" for i in picks)


class DinoV2Backbone(Backbone):
    """A DINOv2 ViT (timm ``VisionTransformer``) exposing each block's patch tokens."""

    def __init__(self, name: str, net: torch.nn.Module, layers: Optional[Sequence[str]] = None,
                 stride: Optional[int] = None) -> None:
        self.name = name
        depth = len(net.blocks)
        self.available_layers = {f"block{i}": PATCH for i in range(depth)}
        self.layer_channels = {n: int(net.embed_dim) for n in self.available_layers}
        super().__init__(layers or default_layers(depth), stride or PATCH)
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') the network sees: a whole number of patches per grid cell, (h·14, w·14)."""
        h, w = self.grid_size(height, width)
        return h * PATCH, w * PATCH

    def normalise_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.clamp(0, 1)
        size = self.input_size(x.shape[-2], x.shape[-1])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def _blocks(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name → ((B, D, h, w) normed patch tokens, (B, D) normed class token)."""
        indices = sorted({int(n[len("block"):]) for n in names})
        outs = self.net.forward_intermediates(x, indices=indices, norm=True, stop_early=True,
                                              intermediates_only=True, return_prefix_tokens=True)
        return {f"block{i}": (patches, prefix[:, 0]) for i, (patches, prefix) in zip(indices, outs)}

    def layer_outputs(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        got = self._blocks(x, names)
        return [got[n][0] for n in names]

    @torch.inference_mode()
    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Global descriptor: the last block's class token after the final norm, L2-normalised."""
        _check_images(images)
        last = list(self.available_layers)[-1]
        cls = self._blocks(self.normalise_input(images.float()), [last])[last][1]
        return F.normalize(cls.float(), dim=1)


# -- checkpoint reading ---------------------------------------------------------------------------

def _plain_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training-checkpoint wrappers off: a ``backbone.`` prefix, chunked ``blocks.C.N.`` keys."""
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in state):
        # DINOv2's BlockChunk pads each chunk with identities, so N is already the global index.
        state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    return state


def official_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The facebookresearch/dinov2 layout → timm's (same key names but for these tokens).

    Official: the class token's position is ``pos_embed[:, 0]`` and registers are inserted after
    the position embedding; timm (``no_embed_class`` when there are registers): ``reg_token`` and a
    class token that already carries its position, and a table of the patch positions only.
    The mask token (used only in training) is dropped.
    """
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        pos = state["pos_embed"]
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def _architecture(state: dict[str, torch.Tensor], path: Path, name: str) -> dict[str, int | bool]:
    """Width, depth, registers, MLP width, layer scale and position grid, read from the shapes."""
    needed = ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise UserError(f"{path}: not a DINOv2 ViT state dict (no {', '.join(absent)}); {name} needs "
                        "a DINOv2 checkpoint, official or timm layout")
    if "blocks.0.mlp.w12.weight" in state:
        raise UserError(f"{path}: SwiGLU ViT (DINOv2 ViT-g) checkpoints are not supported; use the "
                        "ViT-S/B/L files")
    proj = state["patch_embed.proj.weight"]
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    positions = int(state["pos_embed"].shape[1]) - (0 if registers else 1)
    grid = math.isqrt(max(positions, 0))
    if patch != PATCH or grid * grid != positions or width % HEAD_WIDTH:
        raise UserError(f"{path}: not a DINOv2 ViT (patch {patch} px, width {width}, {positions} positions; "
                        f"expected 14-px patches, a width divisible by {HEAD_WIDTH} and a square position grid)")
    return {"width": width, "depth": depth, "registers": registers, "grid": grid,
            "mlp": int(state["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in state else 4 * width,
            "layer_scale": "blocks.0.ls1.gamma" in state}


def _size_name(width: int, depth: int, registers: int) -> Optional[str]:
    return next((n for n, size in SIZES.items() if size == (width, depth, registers)), None)


def build_vit(arch: dict[str, int | bool], device: Optional[str] = None) -> torch.nn.Module:
    """timm's VisionTransformer of that size, UNINITIALISED (timm's init skipped: the caller loads
    every tensor from a file; ``load_into`` checks that none is left out).

    ``device="meta"`` allocates nothing (the loader then assigns the file's tensors): ViT-L builds
    in milliseconds instead of seconds and its weights are not held twice."""
    from timm.models.vision_transformer import VisionTransformer

    width, registers = int(arch["width"]), int(arch["registers"])
    return VisionTransformer(
        img_size=int(arch["grid"]) * PATCH, patch_size=PATCH, embed_dim=width, depth=int(arch["depth"]),
        num_heads=width // HEAD_WIDTH, mlp_ratio=int(arch["mlp"]) / width,
        init_values=1e-5 if arch["layer_scale"] else None, reg_tokens=registers, no_embed_class=registers > 0,
        num_classes=0, dynamic_img_size=True, weight_init="skip", device=device)


def load_dinov2(name: str, weights: Path, layers: Optional[Sequence[str]] = None,
                stride: Optional[int] = None) -> DinoV2Backbone:
    """Read ``weights`` (either layout), check it is ``name``'s size, build and load the ViT."""
    state = _plain_keys(read_state_dict(weights, name))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # e.g. a half-precision file
    if "mask_token" in state or "register_tokens" in state:
        state = official_to_timm(state)
    arch = _architecture(state, weights, name)
    if name in SIZES and SIZES[name] != (arch["width"], arch["depth"], arch["registers"]):
        width, depth, registers = SIZES[name]
        found = _size_name(int(arch["width"]), int(arch["depth"]), int(arch["registers"]))
        advice = f"use --backbone {found}" if found else "use --backbone dinov2 for another size"
        raise UserError(f"{weights}: not {name} weights (the file is a ViT of width {arch['width']}, "
                        f"{arch['depth']} blocks, {arch['registers']} registers; {name} has {width}, {depth}, "
                        f"{registers}); {advice}")
    net = build_vit(arch, device="meta")
    load_into(net, state, weights, name, ignore=lambda k: k.startswith(("head.", "fc_norm.")), assign=True)
    return DinoV2Backbone(name, net, layers, stride)


def _hint(name: str) -> str:
    if name == "dinov2":
        return "a DINOv2 ViT-S/B/L checkpoint of any size, official or timm layout"
    size = name.split("_")[1][3]
    reg = "_reg4" if name.endswith("_reg") else ""
    official = f"{name.replace('_reg', '')}{reg}_pretrain.pth"
    return f"the official DINOv2 file {official}, or timm's vit_{TIMM_NAMES[size]}_patch14{reg}_dinov2 state dict"


def _make_loader(name: str):
    def load(weights: Optional[Path] = None, layers: Optional[Sequence[str]] = None,
             stride: Optional[int] = None) -> DinoV2Backbone:
        return load_dinov2(name, weights, layers, stride)

    return load


for _name in ("dinov2", *SIZES):
    register(_name, needs_weights=True, hint=_hint(_name))(_make_loader(_name))
