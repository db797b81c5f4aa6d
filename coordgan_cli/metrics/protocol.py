"""The label-propagation evaluation protocols of ``coordgan evaluate`` (DESIGN §4).

``paper`` — the CoordGAN paper's protocol, reproduced exactly:
  images and masks at 128 × 128 (masks as soft one-hot maps, area-averaged when shrinking,
  bilinear when enlarging; the query's truth is the arg-max of its soft map), both
  correspondence maps at 128 × 128 (bilinear resampling of stored maps of another size), each
  query pixel takes the soft vote softmax(−‖c_q − c_r‖ / τ), τ = 0.01, of the reference's soft
  labels over all reference pixels (exact kNN vote core), scored per reference with ΣI/ΣU
  (``metrics.iou``) and averaged over references.

``fullres`` — ours: every query at its mask's native size, every reference mask at its native
  size, all references fused in one vote; run over the labelling matchers by
  ``evaluation.protocols.run_fullres``.

Correspondence maps come from a ``MapSource`` (a store, or a model); everything else is arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from coordgan_cli.correspondence.vote import PAPER_SIZE, PAPER_TAU
from coordgan_cli.data.benchmarks import Benchmark, Sample
from coordgan_cli.metrics.iou import IGNORE, IoUAccumulator, IoUResult, summarize


class MapSource(Protocol):
    """Gives correspondence maps of benchmark samples."""

    def map(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        """(2, H, W) float32 map of ``sample`` at ``size`` = (H, W)."""

    def valid(self, sample: Sample, size: tuple[int, int]) -> Optional[np.ndarray]:
        """(H, W) bool pixels whose coordinate means something, or None."""


def resize_map(correspondence_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False) resampling of a (2, h, w) map to (2, H, W) float32."""
    import torch
    import torch.nn.functional as F
    cmap = np.asarray(correspondence_map, dtype=np.float32)
    if tuple(cmap.shape[1:]) == tuple(size):
        return cmap
    t = torch.from_numpy(np.ascontiguousarray(cmap))[None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0].numpy()


def soft_one_hot(mask: np.ndarray, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) id mask as a (C + 1, H', W') soft one-hot map at ``size``.

    Channel C collects ignore (255) pixels. Shrinking averages areas; enlarging is bilinear.
    """
    import torch
    import torch.nn.functional as F
    mask = np.asarray(mask)
    ids = np.where(mask == IGNORE, num_classes, np.minimum(mask, num_classes)).astype(np.int64)
    onehot = np.eye(num_classes + 1, dtype=np.float32)[ids].transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(onehot))[None]
    h, w = mask.shape
    if (h, w) == tuple(size):
        return onehot
    if size[0] <= h and size[1] <= w:
        out = F.interpolate(t, size=tuple(size), mode="area")
    else:
        out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return out[0].numpy()


def hard_labels(soft: np.ndarray) -> np.ndarray:
    """Arg-max of a (C + 1, H, W) soft map → (H, W) uint8 ids, the ignore channel → 255."""
    num_classes = soft.shape[0] - 1
    labels = soft.argmax(axis=0)
    return np.where(labels == num_classes, IGNORE, labels).astype(np.uint8)


def resize_labels_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (h, w) id map to ``size`` (H, W)."""
    import torch
    import torch.nn.functional as F
    if mask.shape == tuple(size):
        return mask
    t = torch.from_numpy(np.ascontiguousarray(mask.astype(np.uint8)))[None, None].float()
    return F.interpolate(t, size=tuple(size), mode="nearest")[0, 0].numpy().astype(np.uint8)


@dataclass
class ProtocolResult:
    """IoU of the evaluated maps and of the baselines computed alongside."""

    protocol: str
    maps: IoUResult
    baselines: dict[str, IoUResult] = field(default_factory=dict)
    size: Optional[int] = None
    # Further matchers scored on the same queries: "correlation", "ensemble" (the maps' own
    # coordinate vote is ``maps``).
    matchers: dict[str, IoUResult] = field(default_factory=dict)


def _vote_labels(query_map: np.ndarray, references: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
                 tau: float, mode: str, scored: Optional[np.ndarray] = None,
                 with_probabilities: bool = False):
    """Vote over [(ref_coords (Nr, 2), ref_soft_labels (Nr, C))] → (H, W) uint8 labels.

    With ``with_probabilities`` also returns the vote's class shares (C, H, W) float32, refined to
    ``ensemble.ENSEMBLE_TOL`` (pixels not voted on: background with share 1); the labels are the
    same either way (the vote's labels are exact).
    """
    from coordgan_cli.correspondence.ensemble import ENSEMBLE_TOL
    from coordgan_cli.correspondence.vote import vote

    _, h, w = query_map.shape
    query = query_map.reshape(2, -1).T
    # Only pixels that are scored need a vote: predictions on ground-truth background or ignore
    # pixels never count, so leaving them background changes no number.
    pick = np.flatnonzero(scored.reshape(-1)) if scored is not None else np.arange(h * w)
    query = query[pick]
    # Vote only over classes some reference carries (e.g. 9 of face-34's 34): the same arg-max,
    # since absent classes get zero mass, at a fraction of the cost.
    present = np.zeros(num_classes, dtype=bool)
    for _coords, labels in references:
        present |= np.asarray(labels).sum(axis=0) > 0
    out = np.zeros(h * w, dtype=np.uint8)
    probabilities = np.zeros((num_classes, h * w), dtype=np.float32) if with_probabilities else None
    if probabilities is not None:
        probabilities[0] = 1.0
    if not present.any() or len(pick) == 0:
        return (out.reshape(h, w), probabilities.reshape(num_classes, h, w)) if with_probabilities else out.reshape(h, w)
    kept = np.flatnonzero(present)
    compact = [(coords, np.asarray(labels)[:, kept]) for coords, labels in references]
    result = vote(query, compact, len(kept), tau=tau, mode=mode, return_probabilities=with_probabilities,
                  tol=ENSEMBLE_TOL if with_probabilities else None)
    out[pick] = kept[np.asarray(result.labels)]
    if probabilities is None:
        return out.reshape(h, w)
    probabilities[:, pick] = 0.0
    probabilities[np.ix_(kept, pick)] = np.asarray(result.probabilities).T
    return out.reshape(h, w), probabilities.reshape(num_classes, h, w)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) → uint8 (H, W, 3): bilinear, antialiased when shrinking (as the encoder's input)."""
    import torch
    import torch.nn.functional as F
    if image.shape[:2] == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class FeatureCorrelation:
    """A trained feature matcher's CoCosNet correlation (``correspondence.correlation``) for the
    protocols: references prepared once (their soft labels warped, not only hard masks), then
    per-query class probabilities.

    ``network`` maps a (1, 3, H, W) image in [-1, 1] to (1, D, H, W) features; ``tau``, ``k`` and
    ``patch`` are the matcher's own settings (its checkpoint's recipe). ``work_size``: the matcher
    sees references and queries with that shorter side and the query's probabilities are carried
    back to its size (``correlation.carry_back``, guided by the query image unless ``refine`` is
    False); None = the images' own sizes.
    """

    def __init__(self, network: torch.nn.Module, *, tau: float, k: Optional[int], patch: bool,
                 device: torch.device | str = "cpu", work_size: Optional[int] = None, refine: bool = True) -> None:
        import torch
        self.network, self.tau, self.k, self.patch = network, tau, k, patch
        self.device = torch.device(device)
        self.work_size, self.refine = work_size, refine

    @classmethod
    def from_matcher(cls, matcher) -> "FeatureCorrelation":
        """The same network and settings as a ``labelling.CorrelationMatcher``."""
        cfg = matcher.config
        return cls(matcher.network, tau=cfg.tau, k=cfg.k, patch=cfg.patch, device=matcher.device,
                   work_size=matcher.work_size)

    def prepare(self, refs: Sequence[tuple[np.ndarray, np.ndarray]]):
        """refs: [(image uint8 (H, W, 3), labels float (C, H, W))] — one-hot or soft (area-averaged)
        labels at the image's size. Positions carrying no label mass (ignore) are left out.
        Returns ``correlation.CorrelationReferences`` pooling every reference's positions."""
        import torch
        from coordgan_cli.correspondence.correlation import CorrelationReferences, resize_labels, work_shape

        feats, values = [], []
        with torch.no_grad():
            for image, labels in refs:
                if labels.shape[1:] != image.shape[:2]:
                    raise ValueError(f"labels {labels.shape[1:]} and image {image.shape[:2]} differ in size")
                f = self.features(image)
                labels = resize_labels(labels, work_shape(image.shape[:2], self.work_size))
                lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)).to(self.device)
                lab = lab.reshape(lab.shape[0], -1)
                keep = lab.sum(dim=0) > 0
                feats.append(f.reshape(f.shape[0], -1)[:, keep])
                values.append(lab[:, keep])
        return CorrelationReferences(torch.cat(feats, dim=1), torch.cat(values, dim=1))

    def features(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) → normalised matcher features (D', h, w) at the working size
        (``correlation.work_shape``; reusable across references)."""
        import torch
        from coordgan_cli.correspondence.correlation import _image_tensor, normalise_features, resize_image, work_shape

        small = resize_image(image, work_shape(image.shape[:2], self.work_size))
        with torch.no_grad():
            return normalise_features(self.network(_image_tensor(small, self.device))[0], patch=self.patch)

    def probabilities(self, query, prepared, image: Optional[np.ndarray] = None) -> np.ndarray:
        """Query image uint8 (H, W, 3) — or its :meth:`features` with the image itself as
        ``image`` — → (C, H, W) float32 warped reference labels at the image's size (top-k chunked
        correlation at the working size, carried back with guided refinement; without a working
        size pixels sum to the labels' mass, ≤ 1)."""
        import torch
        from coordgan_cli.correspondence.correlation import carry_back, correlation_chunked

        if isinstance(query, np.ndarray):
            image = query if image is None else image
            feats = self.features(query)
        else:
            feats = query
        size = tuple(image.shape[:2]) if image is not None else tuple(feats.shape[1:])
        if prepared.features.shape[1] == 0:
            out = np.zeros((prepared.onehot.shape[0],) + size, np.float32)
            out[0] = 1.0
            return out
        with torch.no_grad():
            # Pooled positions as a (D, 1, N) "image" so the chunked routine applies unchanged.
            result = correlation_chunked(feats, prepared.features.unsqueeze(1), prepared.onehot.unsqueeze(1),
                                         tau=self.tau, k=self.k, normalise=False)
        probabilities = (result.probabilities if image is None
                         else carry_back(result.probabilities, image, refine=self.refine))
        return probabilities.float().cpu().numpy()


def _fused_labels(*probabilities: np.ndarray) -> np.ndarray:
    """Arg-max of the mean of (C, H, W) class distributions → (H, W) uint8."""
    from coordgan_cli.correspondence.ensemble import fuse_probabilities

    return fuse_probabilities(*probabilities)[0]


def _read_image(sample: Sample) -> np.ndarray:
    from coordgan_cli.io.images import read_image

    return read_image(sample.image)


def run_paper(bench: Benchmark, source: MapSource, *, tau: float = PAPER_TAU, mode: str = "soft",
              size: int = PAPER_SIZE, extra_baselines: Optional[dict[str, Callable]] = None,
              correlation: Optional[FeatureCorrelation] = None,
              progress: Optional[Callable[[int], None]] = None) -> ProtocolResult:
    """The paper protocol (see module docstring). ``progress(n)`` is called after each query.

    With ``correlation`` the feature matcher is scored the same way (images resized to
    ``size``², each reference's soft labels warped by the correlation, per reference ΣI/ΣU) as
    ``matchers["correlation"]``, and ``matchers["ensemble"]`` averages, per reference and pixel,
    the coordinate vote's class shares with the correlation's.
    """
    c = bench.num_classes
    hw = (size, size)
    refs = []
    corr_refs = {}
    for r in bench.references:
        soft = soft_one_hot(bench.read_mask(r), c, hw)
        cmap = source.map(r, hw)
        coords = cmap.reshape(2, -1).T
        # Soft labels for the vote (ignore mass dropped: it votes for no class).
        labels = soft[:c].reshape(c, -1).T
        if correlation is not None:
            # The correlation warps the same soft labels, read off the reference's own image
            # (not masked by the store's `valid`: that marks coordinates, not features).
            corr_refs[r.name] = correlation.prepare([(resize_image(_read_image(r), hw), soft[:c])])
        valid = source.valid(r, hw)
        if valid is not None:
            # A store's `valid` marks pixels whose coordinate means nothing (background beyond
            # the object, occluders): they carry no vote. Model maps have no such mask.
            labels = labels * valid.reshape(-1, 1)
        refs.append((r.name, coords, labels, hard_labels(soft)))
    names = [name for name, *_ in refs]
    acc = {name: IoUAccumulator(c) for name in names}
    identity = {name: IoUAccumulator(c) for name in names}
    extra = {k: {name: IoUAccumulator(c) for name in names} for k in (extra_baselines or {})}
    others = {k: {name: IoUAccumulator(c) for name in names}
              for k in (("correlation", "ensemble") if correlation is not None else ())}
    for q in bench.queries:
        truth = hard_labels(soft_one_hot(bench.read_mask(q), c, hw))
        scored = (truth > 0) & (truth != IGNORE)
        qmap = source.map(q, hw)
        # The query's matcher features, computed once for all references.
        q_image = resize_image(_read_image(q), hw) if correlation is not None else None
        q_feats = correlation.features(q_image) if correlation is not None else None
        for name, coords, labels, ref_hard in refs:
            if correlation is None:
                pred = _vote_labels(qmap, [(coords, labels)], c, tau, mode, scored=scored)
            else:
                pred, shares = _vote_labels(qmap, [(coords, labels)], c, tau, mode, scored=scored,
                                            with_probabilities=True)
                corr = correlation.probabilities(q_feats, corr_refs[name], image=q_image)
                others["correlation"][name].update(corr.argmax(axis=0).astype(np.uint8), truth)
                others["ensemble"][name].update(_fused_labels(shares, corr), truth)
            acc[name].update(pred, truth)
            identity[name].update(ref_hard, truth)
        for key, fn in (extra_baselines or {}).items():
            for (name, _coords, labels, _hard), r in zip(refs, bench.references):
                extra[key][name].update(fn(r, q, labels, hw), truth)
        if progress is not None:
            progress(1)
    baselines = {"identity": summarize(identity, c, bench.exclude)}
    for key, accs in extra.items():
        baselines[key] = summarize(accs, c, bench.exclude)
    matchers = {key: summarize(accs, c, bench.exclude) for key, accs in others.items()}
    return ProtocolResult("paper", summarize(acc, c, bench.exclude), baselines, size, matchers)


# --------------------------------------------------------------------------------------------
# Correspondence accuracy on synthetic data (known truth)


def keypoint_pck(bench: Benchmark, source: MapSource, keypoints: dict[str, np.ndarray],
                 image_sizes: Callable[[Sample], tuple[int, int]]) -> dict:
    """PCK@0.05/0.1 of every reference's keypoints moved to every query by ``source``'s maps.

    Args:
        keypoints: image name → (K, 3) array of (x, y, visibility) in that image's pixels.
        image_sizes: sample → (H, W) of its image (the keypoints' frame).

    Returns:
        {"pck": {"0.05": …, "0.1": …} | None, "pck_pairs", "pck_keypoints"}.
    """
    from coordgan_cli.metrics.keypoints import pck, pooled_pck, transfer_keypoints

    vmax = max((float(k[:, 2].max()) for k in keypoints.values() if len(k)), default=0.0)
    counts, pairs = [], 0
    for r in bench.references:
        if r.name not in keypoints:
            continue
        rsize = image_sizes(r)
        rmap = source.map(r, rsize)
        rkp = keypoints[r.name]
        for q in bench.queries:
            if q.name not in keypoints:
                continue
            qkp = keypoints[q.name]
            if len(qkp) != len(rkp):
                continue
            qsize = image_sizes(q)
            qmap = source.map(q, qsize)
            visible = (rkp[:, 2] >= vmax) & (qkp[:, 2] >= vmax) & (vmax > 0)
            if not visible.any():
                continue
            moved, _dist = transfer_keypoints(rmap, qmap, rkp[:, :2], query_valid=source.valid(q, qsize))
            counts.append(pck(moved, qkp[:, :2], qsize, (0.05, 0.1), mask=visible))
            pairs += 1
    return {"pck": pooled_pck(counts) if counts else None, "pck_pairs": pairs,
            "pck_keypoints": int(sum(c[0.05][1] for c in counts))}


def correspondence_accuracy(bench: Benchmark, source: MapSource, truth_maps: MapSource,
                            keypoints: Optional[dict[str, np.ndarray]],
                            image_sizes: Callable[[Sample], tuple[int, int]],
                            truth_size: Callable[[Sample], tuple[int, int]]) -> dict:
    """PCK of transferred keypoints (:func:`keypoint_pck`) and end-point error against the
    ground-truth store.

    Args:
        keypoints: image name → (K, 3) array of (x, y, visibility) in that image's pixels, or None.
        image_sizes: sample → (H, W) of its image (the keypoints' frame).
        truth_size: sample → (H, W) of its ground-truth map.

    Returns:
        {"pck": {"0.05": …, "0.1": …} | None, "pck_pairs", "pck_keypoints", "epe": {…}}.
    """
    from coordgan_cli.metrics.keypoints import end_point_error

    out: dict = keypoint_pck(bench, source, keypoints, image_sizes) if keypoints is not None else {}
    canonical = pixels = 0.0
    count = 0
    for q in bench.queries:
        tsize = truth_size(q)
        true_map = truth_maps.map(q, tsize)
        valid = truth_maps.valid(q, tsize)
        e_can, e_pix, n = end_point_error(source.map(q, tsize), true_map, valid)
        canonical += e_can
        pixels += e_pix
        count += n
    out["epe"] = {
        "canonical": canonical / count if count else None,
        "pixels": pixels / count if count else None,
        "pixels_counted": count,
        "definition": "mean over valid query pixels of the distance between predicted and true canonical "
                      "coordinates; pixels = per-axis × (size − 1)/2",
    }
    return out


def _unit_rows(features: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) features resized bilinearly to ``size`` → (H·W, C) unit rows."""
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None]
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0]
    return F.normalize(t.reshape(t.shape[0], -1).T, dim=1)


def _most_similar(query: torch.Tensor, pool: torch.Tensor, chunk: int) -> np.ndarray:
    """Index into ``pool`` (M, C) of the most similar row for each row of ``query`` (N, C)."""
    import torch
    best = torch.empty(query.shape[0], dtype=torch.long)
    for start in range(0, query.shape[0], chunk):
        best[start:start + chunk] = (query[start:start + chunk] @ pool.T).argmax(dim=1)
    return best.numpy()


def cosine_pool(references: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, np.ndarray]:
    """The candidates of :func:`cosine_nn_pooled`, built once for many queries: (M, C) unit
    feature rows and (M,) labels of every labelled pixel of every reference.

    Args:
        references: (features (C, h, w), labels (H_r, W_r) int) per reference; its features are
            resized bilinearly to its labels' size; pixels labelled ``IGNORE`` are no candidates.
    """
    import torch
    feats, labels = [], []
    for features, lab in references:
        lab = np.asarray(lab)
        keep = (lab != IGNORE).reshape(-1)
        feats.append(_unit_rows(features, lab.shape)[torch.from_numpy(keep)])
        labels.append(lab.reshape(-1)[keep])
    return torch.cat(feats), np.concatenate(labels)


def cosine_nn_pooled(references: Sequence[tuple[np.ndarray, np.ndarray]] | tuple[torch.Tensor, np.ndarray],
                     query_features: np.ndarray, size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """Baseline: each query pixel copies the label of the most similar (cosine) labelled pixel over
    all references pooled.

    Args:
        references: as for :func:`cosine_pool`, or its result (to prepare the references once).
        query_features: (C, h, w), resized bilinearly to ``size``.

    Returns:
        (H, W) uint8 labels at ``size``.
    """
    pool, labels = references if isinstance(references, tuple) else cosine_pool(references)
    best = _most_similar(_unit_rows(query_features, size), pool, chunk)
    return labels[best].reshape(size).astype(np.uint8)


def cosine_nn_labels(reference_features: np.ndarray, query_features: np.ndarray, reference_labels: np.ndarray,
                     size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """Baseline: each query pixel copies the label of the reference pixel with the most similar
    feature (cosine similarity), both feature maps resized bilinearly to ``size``.

    Args:
        reference_features, query_features: (C, h, w) feature maps.
        reference_labels: (H·W,) int labels of the reference at ``size``.

    Returns:
        (H, W) uint8 labels.
    """
    best = _most_similar(_unit_rows(query_features, size), _unit_rows(reference_features, size), chunk)
    return np.asarray(reference_labels)[best].reshape(size).astype(np.uint8)
