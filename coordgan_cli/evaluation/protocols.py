"""The two label-propagation protocols (DESIGN §4) run over the columns' labelling matchers.

``fullres`` — every column is a fitted ``labelling`` Matcher: all references (images resized to
their masks' size) fused in one fit, each query labelled at its mask's native size, only its
scored pixels asked for (``label(..., only=scored)``); scored as one fused reference.

``paper`` — 128², per reference, ΣI/ΣU averaged over references. The coordinate vote on soft
(area-averaged) reference labels, the correlation warping those soft labels and their ensemble
stay the protocol's own (``metrics.protocol.run_paper``; the correlation's network and settings
come from the column's ``CorrelationMatcher``); any other matcher is fitted on each reference
alone (its 128² image and hard mask) and asked about each 128² query.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence

import numpy as np

from coordgan_cli.data.benchmarks import Benchmark, Sample
from coordgan_cli.evaluation.columns import ALWAYS_LISTED, LastQuery
from coordgan_cli.labelling import Matcher, MatcherBase, References
from coordgan_cli.metrics.iou import IGNORE, IoUAccumulator, IoUResult, summarize
from coordgan_cli.metrics.protocol import (PAPER_SIZE, PAPER_TAU, FeatureCorrelation, ProtocolResult, hard_labels,
                                           resize_image, resize_labels_nearest, run_paper, soft_one_hot)

Progress = Optional[Callable[[int], None]]


def _read_image(sample: Sample) -> np.ndarray:
    from coordgan_cli.io.images import read_image

    return read_image(sample.image)


def benchmark_references(bench: Benchmark, samples: Sequence[Sample], images: list[np.ndarray],
                         masks: list[np.ndarray]) -> References:
    """``References`` of benchmark samples (images already at their masks' size), named by the
    samples' names, over the benchmark's classes."""
    from coordgan_cli.io.masks import labels_from_names

    return References(images=images, masks=masks, names=[s.name for s in samples], paths=[s.image for s in samples],
                      classes=tuple(range(bench.num_classes)), labels=labels_from_names(bench.class_names),
                      store_names=[list(dict.fromkeys([s.name, *s.keys])) for s in samples])


def predict_labels(matcher: Matcher, image: np.ndarray, name: str, scored: np.ndarray) -> np.ndarray:
    """(H, W) uint8 labels of one query: the matcher's ``label`` (told the scored pixels when it
    takes ``only``), else the argmax of its ``predict_proba``."""
    label = getattr(matcher, "label", None)
    if label is None:
        return MatcherBase.label(matcher, image, name=name).labels  # type: ignore[arg-type]
    if "only" in inspect.signature(label).parameters:
        return np.asarray(label(image, name=name, only=scored).labels)
    return np.asarray(label(image, name=name).labels)


def _identity_labels(masks: list[np.ndarray], shape: tuple[int, int], c: int) -> np.ndarray:
    """Identity baseline: each reference mask resized to the query, majority over references."""
    counts = np.zeros((c + 1,) + tuple(shape), dtype=np.int32)
    for mask in masks:
        resized = resize_labels_nearest(mask, shape)
        ids = np.where(resized == IGNORE, c, np.minimum(resized, c))
        np.add.at(counts, (ids,) + tuple(np.indices(shape)), 1)
    pred = counts.argmax(axis=0)
    return np.where(pred == c, IGNORE, pred).astype(np.uint8)


def run_fullres(bench: Benchmark, matchers: dict[str, Matcher], *,
                extra_baselines: Optional[dict[str, Callable]] = None, progress: Progress = None) -> ProtocolResult:
    """Native resolution, all references fused. ``matchers`` usually holds ``coordinates`` (the
    report's main result; without it ``ProtocolResult.maps`` is None). ``extra_baselines``: name →
    fn(references, reference masks, query, (H, W)) → (H, W) labels, scored like the identity
    baseline. ``bench.folds`` (e.g. leave-one-out): each fold's references label its queries, and
    all folds are scored as one query set; ``bench.present_only``: the mean runs over the classes
    present in the queries' ground truth."""
    c = bench.num_classes
    accs = {name: IoUAccumulator(c) for name in matchers}
    identity = IoUAccumulator(c)
    extra = {k: IoUAccumulator(c) for k in (extra_baselines or {})}
    truth_area = np.zeros(c, dtype=np.int64)
    for fold_refs, fold_queries in bench.folds or [(bench.references, bench.queries)]:
        masks = [bench.read_mask(r) for r in fold_refs]
        images = [resize_image(_read_image(r), m.shape) for r, m in zip(fold_refs, masks)]
        references = benchmark_references(bench, fold_refs, images, masks)
        for matcher in matchers.values():
            matcher.fit(references)
        for q in fold_queries:
            truth = bench.read_mask(q)
            truth_area += np.bincount(truth[truth < c].ravel(), minlength=c)[:c]
            # Unscored pixels (truth background / ignore) count for no class: no need to label them.
            scored = (truth > 0) & (truth != IGNORE)
            image = resize_image(_read_image(q), truth.shape)
            for name, matcher in matchers.items():
                accs[name].update(predict_labels(matcher, image, q.name, scored), truth)
            identity.update(_identity_labels(masks, truth.shape, c), truth)
            for key, fn in (extra_baselines or {}).items():
                extra[key].update(fn(fold_refs, masks, q, truth.shape), truth)
            if progress is not None:
                progress(1)
    exclude = set(bench.exclude)
    if bench.present_only:
        exclude |= {k for k in range(1, c) if truth_area[k] == 0}
    fused = ("leave-one-out" if bench.folds else "fused: " + ", ".join(r.name for r in bench.references))
    scored_as = {k: summarize({fused: a}, c, exclude) for k, a in accs.items()}
    baselines = {"identity": summarize({fused: identity}, c, exclude)}
    baselines.update({k: summarize({fused: a}, c, exclude) for k, a in extra.items()})
    main = scored_as.pop("coordinates", None)
    return ProtocolResult("fullres", main, baselines, None, scored_as)


def _feature_correlation(matchers: dict[str, Matcher]) -> Optional[FeatureCorrelation]:
    """The paper protocol's correlation, from the correlation (or ensemble) column's matcher."""
    candidates = [matchers.get("correlation"), *getattr(matchers.get("ensemble"), "members", [])]
    for m in candidates:
        if isinstance(m, LastQuery):
            return FeatureCorrelation.from_matcher(m.inner)
    return None


def paper_per_reference(bench: Benchmark, matcher: Matcher, size: int = PAPER_SIZE) -> IoUResult:
    """A matcher under the paper protocol: fitted on each reference alone at size², every query at
    size², ΣI/ΣU per reference, averaged."""
    c, hw = bench.num_classes, (size, size)
    accs: dict[str, IoUAccumulator] = {}
    for r in bench.references:
        mask = hard_labels(soft_one_hot(bench.read_mask(r), c, hw))
        matcher.fit(benchmark_references(bench, [r], [resize_image(_read_image(r), hw)], [mask]))
        acc = accs[r.name] = IoUAccumulator(c)
        for q in bench.queries:
            truth = hard_labels(soft_one_hot(bench.read_mask(q), c, hw))
            scored = (truth > 0) & (truth != IGNORE)
            acc.update(predict_labels(matcher, resize_image(_read_image(q), hw), q.name, scored), truth)
    return summarize(accs, c, bench.exclude)


def run_paper_columns(bench: Benchmark, source: Any, matchers: dict[str, Matcher], *, tau: float = PAPER_TAU,
                      mode: str = "soft", extra_baselines: Optional[dict[str, Callable]] = None,
                      progress: Progress = None) -> ProtocolResult:
    """The paper protocol over the columns (see the module docstring); ``source`` gives the maps."""
    result = run_paper(bench, source, tau=tau, mode=mode, extra_baselines=extra_baselines,
                       correlation=_feature_correlation(matchers), progress=progress)
    result.matchers = {k: v for k, v in result.matchers.items() if k in matchers}
    for name, matcher in matchers.items():
        if name not in ALWAYS_LISTED:
            result.matchers[name] = paper_per_reference(bench, matcher, result.size or PAPER_SIZE)
    return result
