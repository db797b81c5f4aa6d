"""Feature-correlation matching (CoCosNet / MCL-Net family, DESIGN §6), at any resolution.

CoCosNet warps an exemplar by a softmax over the cosine similarities of normalised features:
each query position q takes ``softmax_r(cos(f_q, g_r) / tau)``-weighted averages of the
exemplar's one-hot mask (and of its image, for a preview). The straightforward form builds the
(HqWq × HrWr) matrix, 64 MiB at 64², 1 GiB at 128², 16 GiB at 256². Here the query positions are
processed in chunks and, per query, only the ``k`` most similar reference positions are kept:
with tau = 0.01 a reference position whose cosine is 0.2 below the best one carries a weight of
e^-20 relative to it, so top-k with a modest k (128: 99.7 % label agreement with the dense form
at 128² even for untrained features, see ``benchmarks/correlation.py``) gives the same labels while the memory held
across chunks is O(HqWq·k) and the transient per-chunk block is bounded by ``chunk_elements``.

``correlation_dense`` is the plain reference (tests, benchmarks); ``correlation_chunked`` is what
the toolkit runs. Both are torch and follow the device of their inputs.

Working resolution. A matcher trained on 64 px images describes a 64 px face; on an 800×600 photo
its receptive field covers a sliver of the object, so matching there is both slow (the
correlation grows with (HW)²) and worse. With ``work_size`` the references and queries are
resized so that their shorter side is ``work_size`` (aspect kept) before the matcher sees them,
matched there, and the query's class probabilities are carried back to its own size by
``upsample.upsample_probabilities`` (bilinear, then refined at boundaries by the query image with
a guided filter).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.errors import UserError


class WarpResult(NamedTuple):
    """Result of warping a reference onto a query.

    probabilities: (C, Hq, Wq) float — warped one-hot reference labels (each pixel sums to 1).
    confidence:    (Hq, Wq) float — the largest class probability at each query pixel.
    image:         (3, Hq, Wq) float — the warped reference image, or None when none was given.
    """

    probabilities: torch.Tensor
    confidence: torch.Tensor
    image: Optional[torch.Tensor]


def normalise_features(features: torch.Tensor, *, patch: bool = False) -> torch.Tensor:
    """CoCosNet feature normalisation.

    features: (D, H, W) or (B, D, H, W). Each position is centred across channels (its channel
    mean subtracted; the supplement's channel-wise statistics), optionally stacked with its 3×3
    neighbours (zero padding) so that matching compares small patches, then L2-normalised.
    Returns (D', H, W) or (B, D', H, W) with D' = D, or 9·D with ``patch``.
    """
    squeeze = features.dim() == 3
    if squeeze:
        features = features.unsqueeze(0)
    if features.dim() != 4:
        raise ValueError(f"features must be (D,H,W) or (B,D,H,W), got shape {tuple(features.shape)}")
    features = features - features.mean(dim=1, keepdim=True)
    if patch:
        b, d, h, w = features.shape
        features = F.unfold(features, kernel_size=3, padding=1).reshape(b, d * 9, h, w)
    features = F.normalize(features, dim=1, eps=1e-8)
    return features.squeeze(0) if squeeze else features


def _check_inputs(query: torch.Tensor, reference: torch.Tensor, ref_onehot: torch.Tensor,
                  ref_image: Optional[torch.Tensor]) -> None:
    if query.dim() != 3 or reference.dim() != 3:
        raise ValueError(f"features must be (D,H,W); got {tuple(query.shape)} and {tuple(reference.shape)}")
    if query.shape[0] != reference.shape[0]:
        raise ValueError(f"feature widths differ: query {query.shape[0]}, reference {reference.shape[0]}")
    if ref_onehot.dim() != 3 or ref_onehot.shape[1:] != reference.shape[1:]:
        raise ValueError(f"reference one-hot must be (C,{reference.shape[1]},{reference.shape[2]}), got {tuple(ref_onehot.shape)}")
    if ref_image is not None and (ref_image.dim() != 3 or ref_image.shape[1:] != reference.shape[1:]):
        raise ValueError(f"reference image must be (3,{reference.shape[1]},{reference.shape[2]}), got {tuple(ref_image.shape)}")


def _stack_values(ref_onehot: torch.Tensor, ref_image: Optional[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(C [+3], HrWr) values to be warped together, and C."""
    c = ref_onehot.shape[0]
    values = ref_onehot.reshape(c, -1).float()
    if ref_image is not None:
        values = torch.cat([values, ref_image.reshape(ref_image.shape[0], -1).float()], dim=0)
    return values, c


def _result(warped: torch.Tensor, c: int, hq: int, wq: int, with_image: bool) -> WarpResult:
    probabilities = warped[:c].reshape(c, hq, wq)
    image = warped[c:].reshape(-1, hq, wq) if with_image else None
    return WarpResult(probabilities, probabilities.max(dim=0).values, image)


def _flat_features(query_features: torch.Tensor, ref_features: torch.Tensor, normalise: bool,
                   patch: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(D, HqWq) query and (D, HrWr) reference features in float32 (normalised if asked), Hq, Wq."""
    if normalise:
        query_features = normalise_features(query_features, patch=patch)
        ref_features = normalise_features(ref_features, patch=patch)
    d, hq, wq = query_features.shape
    return query_features.reshape(d, -1).float(), ref_features.reshape(d, -1).float(), hq, wq


def correlation_dense(query_features: torch.Tensor, ref_features: torch.Tensor, ref_onehot: torch.Tensor,
                      *, tau: float = 0.01, ref_image: Optional[torch.Tensor] = None,
                      normalise: bool = True, patch: bool = False) -> WarpResult:
    """The straightforward CoCosNet correlation: the full (HqWq × HrWr) softmax matrix.

    query_features: (D, Hq, Wq); ref_features: (D, Hr, Wr); ref_onehot: (C, Hr, Wr) one-hot (or
    soft) reference labels; ref_image: optional (3, Hr, Wr). ``normalise`` applies
    ``normalise_features`` (pass False for features that are already normalised).
    Memory is O((HW)²): a reference for tests and benchmarks, not for real use.
    """
    _check_inputs(query_features, ref_features, ref_onehot, ref_image)
    q, r, hq, wq = _flat_features(query_features, ref_features, normalise, patch)
    attention = torch.softmax((q.t() @ r) / tau, dim=1)  # (HqWq, HrWr)
    values, c = _stack_values(ref_onehot, ref_image)
    warped = values @ attention.t()  # (C[+3], HqWq)
    return _result(warped, c, hq, wq, ref_image is not None)


def correlation_chunked(query_features: torch.Tensor, ref_features: torch.Tensor, ref_onehot: torch.Tensor,
                        *, tau: float = 0.01, k: Optional[int] = 128, ref_image: Optional[torch.Tensor] = None,
                        normalise: bool = True, patch: bool = False,
                        chunk_elements: int = 1 << 22) -> WarpResult:
    """CoCosNet correlation in query chunks, keeping the top-``k`` reference positions per query.

    Same inputs and outputs as ``correlation_dense``. ``k=None`` (or k ≥ HrWr) keeps every
    reference position: exact (up to float rounding) at bounded memory; smaller k drops reference
    positions whose weight is negligible at small tau and makes each chunk's weighted sum O(k).
    ``chunk_elements`` bounds the transient similarity block (queries per chunk × HrWr); the
    top-k weights and gathered values of a chunk are O(chunk·k·V) and the output O(V·HqWq), so
    peak memory does not grow with (HW)² (measured in ``benchmarks/correlation.py``).
    """
    _check_inputs(query_features, ref_features, ref_onehot, ref_image)
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    q, r, hq, wq = _flat_features(query_features, ref_features, normalise, patch)
    n_ref = r.shape[1]
    exact = k is None
    k = n_ref if exact else min(k, n_ref)
    values, c = _stack_values(ref_onehot, ref_image)
    values_t = values.t().contiguous()  # (HrWr, V) so gathered rows are contiguous
    warped = torch.empty(values.shape[0], q.shape[1], dtype=values.dtype, device=values.device)
    step = max(1, chunk_elements // n_ref)
    for start in range(0, q.shape[1], step):
        stop = min(start + step, q.shape[1])
        similarity = q[:, start:stop].t() @ r  # (n, HrWr), freed after this chunk
        if exact:
            weights = torch.softmax(similarity.div_(tau), dim=1)
            warped[:, start:stop] = (weights @ values_t).t()
            continue
        top_sim, top_idx = torch.topk(similarity, k, dim=1, sorted=False)
        del similarity
        weights = torch.softmax(top_sim / tau, dim=1)  # (n, k)
        # Weighted sum of the k gathered reference values: (n, k, V) → (n, V).
        warped[:, start:stop] = torch.einsum("nk,nkv->vn", weights, values_t[top_idx])
    return _result(warped, c, hq, wq, ref_image is not None)


def one_hot_mask(mask: torch.Tensor, num_classes: int, ignore: int = 255) -> torch.Tensor:
    """(H, W) integer class ids → (C, H, W) float one-hot; ``ignore`` pixels get all zeros."""
    mask = mask.long()
    keep = mask != ignore
    if bool((mask[keep] >= num_classes).any()) or bool((mask[keep] < 0).any()):
        bad = int(mask[keep].max())
        raise UserError(f"mask has class id {bad} but only {num_classes} classes are declared")
    onehot = F.one_hot(torch.where(keep, mask, torch.zeros_like(mask)), num_classes).permute(2, 0, 1).float()
    return onehot * keep.unsqueeze(0).float()


def work_shape(size: Sequence[int], work_size: Optional[int]) -> tuple[int, int]:
    """(h, w) at which the matcher sees an image of ``size`` (H, W): the shorter side becomes
    ``work_size``, the aspect ratio is kept (sides rounded, at least 1). ``None`` or 0: (H, W)."""
    h, w = int(size[0]), int(size[1])
    if not work_size:
        return h, w
    if work_size < 0:
        raise ValueError(f"work_size must be positive (or 0/None for the native size), got {work_size}")
    scale = work_size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 (H, W, 3) → (h, w, 3): area averaging when shrinking (no aliasing), bilinear when
    enlarging. Returned unchanged at the same size."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Per-class label mass (C, H, W) float → (C, h, w) float32 by area averaging (soft at
    boundaries; mass of ignore pixels, which is 0 in every class, stays out)."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape[1:] == (h, w):
        return labels
    shrink = h * w < labels.shape[1] * labels.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(np.ascontiguousarray(plane), (w, h), interpolation=interp) for plane in labels])


def carry_back(probabilities: torch.Tensor, image: np.ndarray, *, refine: bool = True) -> torch.Tensor:
    """Class probabilities (C, h, w) at the working size → (C, H, W) at ``image``'s own size (a
    float32 tensor on the same device): bilinear upsampling of the probabilities, refined at
    boundaries by ``image`` (uint8 (H, W, 3)) with a guided filter unless ``refine`` is False.
    Unchanged when the sizes already agree."""
    from coordgan_cli.correspondence.upsample import upsample_probabilities

    size = tuple(image.shape[:2])
    if tuple(probabilities.shape[1:]) == size:
        return probabilities
    up = upsample_probabilities(probabilities.float().cpu().numpy(), size, image if refine else None)
    return torch.from_numpy(up).to(probabilities.device)


def _image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) → float (1, 3, H, W) in [-1, 1] (the generator's image range)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H,W,3) image, got {image.dtype} {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
    return (t / 127.5 - 1.0).unsqueeze(0)


class CorrelationReferences(NamedTuple):
    """Reference positions pooled for correlation, computed once and reused for every query.

    features: (D', N) normalised matcher features of the labelled positions of all references.
    onehot:   (C, N) their one-hot labels (ignore pixels are left out of N).
    """

    features: torch.Tensor
    onehot: torch.Tensor


def prepare_correlation_references(refs: Sequence[tuple[np.ndarray, np.ndarray]], matcher: torch.nn.Module,
                                   num_classes: int, *, device: torch.device | str = "cpu", patch: bool = False,
                                   ignore: int = 255, work_size: Optional[int] = None) -> CorrelationReferences:
    """Features and one-hot labels of the references' labelled positions, pooled.

    refs: [(ref_image uint8 (Hr, Wr, 3), ref_mask uint8 (Hr, Wr))], sizes may differ. ``matcher``
    maps a (1, 3, H, W) image in [-1, 1] to (1, D, H, W) features. Pixels marked ``ignore`` are
    left out of the candidate positions. Tensors live on ``device``. With ``work_size`` each
    reference is matched at :func:`work_shape` (its one-hot labels area-averaged to that size, so
    positions on a boundary carry soft labels; positions that are wholly ``ignore`` are left out).
    Call once per run: the result serves every query.
    """
    if not refs:
        raise UserError("propagate: at least one reference (image, mask) is needed")
    device = torch.device(device)
    feats, onehots = [], []
    with torch.no_grad():
        for ref_image, ref_mask in refs:
            if ref_mask.shape != ref_image.shape[:2]:
                raise UserError(f"reference mask size {ref_mask.shape} differs from its image size {ref_image.shape[:2]}")
            mask = torch.from_numpy(np.ascontiguousarray(ref_mask)).to(device)
            onehot = one_hot_mask(mask, num_classes, ignore)
            shape = work_shape(ref_mask.shape, work_size)
            if shape != tuple(ref_mask.shape):
                ref_image = resize_image(ref_image, shape)
                onehot = torch.from_numpy(resize_labels(onehot.cpu().numpy(), shape)).to(device)
            f = normalise_features(matcher(_image_tensor(ref_image, device))[0], patch=patch)
            onehot = onehot.reshape(num_classes, -1)
            keep = onehot.sum(dim=0) > 0
            feats.append(f.reshape(f.shape[0], -1)[:, keep])
            onehots.append(onehot[:, keep])
    features = torch.cat(feats, dim=1)
    if features.shape[1] == 0:
        raise UserError("propagate: every reference pixel is marked ignore (255)")
    return CorrelationReferences(features, torch.cat(onehots, dim=1))


def correlation_probabilities(query_image: np.ndarray, references: CorrelationReferences, matcher: torch.nn.Module,
                              *, tau: float = 0.01, k: Optional[int] = 128, device: torch.device | str = "cpu",
                              patch: bool = False, work_size: Optional[int] = None,
                              refine: bool = True) -> torch.Tensor:
    """Warped one-hot reference labels on a query image: (C, H, W) float, each pixel sums to 1.

    query_image: uint8 (H, W, 3); ``references`` from :func:`prepare_correlation_references` (same
    ``matcher``, ``patch`` and ``work_size``). Each query pixel's softmax runs over the top-k
    positions of all references together, so the best-matching reference wins locally. With
    ``work_size`` the query is matched at :func:`work_shape` and the probabilities are carried
    back to (H, W) by :func:`carry_back` (guided by the query image unless ``refine`` is False).
    """
    shape = work_shape(query_image.shape[:2], work_size)
    with torch.no_grad():
        small = resize_image(query_image, shape)
        query = normalise_features(matcher(_image_tensor(small, torch.device(device)))[0], patch=patch)
        # Pooled positions as a (D, 1, N) "image" so the chunked routine applies unchanged.
        result = correlation_chunked(query, references.features.unsqueeze(1), references.onehot.unsqueeze(1),
                                     tau=tau, k=k, normalise=False)
    return carry_back(result.probabilities, query_image, refine=refine)


def propagate_correlation(query_image: np.ndarray, refs: Sequence[tuple[np.ndarray, np.ndarray]],
                          matcher: torch.nn.Module, num_classes: int, *, tau: float = 0.01, k: int = 128,
                          device: torch.device | str = "cpu", patch: bool = False,
                          ignore: int = 255, work_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Transfer reference masks to a query image by feature correlation.

    query_image: uint8 (H, W, 3). refs: [(ref_image uint8 (Hr, Wr, 3), ref_mask uint8 (Hr, Wr))]
    — reference sizes may differ from the query and from each other. ``matcher`` maps a (1, 3, H,
    W) image in [-1, 1] to (1, D, H, W) per-pixel features (``coordgan_cli.models.matcher``).
    Several references are fused by pooling their positions (see :func:`correlation_probabilities`).
    Pixels marked ``ignore`` in a reference mask are left out of the candidate positions.
    ``work_size``: match at that shorter side and carry the probabilities back (see the module
    docstring); None matches at the images' own sizes.
    Returns (labels uint8 (H, W), confidence float32 (H, W) = the winning class probability).
    For many queries, prepare the references once and call :func:`correlation_probabilities`.
    """
    prepared = prepare_correlation_references(refs, matcher, num_classes, device=device, patch=patch, ignore=ignore,
                                              work_size=work_size)
    probabilities = correlation_probabilities(query_image, prepared, matcher, tau=tau, k=k, device=device,
                                              patch=patch, work_size=work_size)
    labels = probabilities.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return labels, probabilities.max(dim=0).values.float().cpu().numpy()
