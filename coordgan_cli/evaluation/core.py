"""``evaluate_benchmark``: the whole of ``coordgan evaluate`` behind its options — a benchmark loaded
by layout, its maps (store or model), the matcher columns, the protocol, correspondence accuracy on
synthetic data, the model metrics — returned as the report (``report.build_report``'s object)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

import numpy as np

from coordgan_cli.data.benchmarks import Benchmark, load_benchmark, read_keypoints
from coordgan_cli.errors import UserError
from coordgan_cli.evaluation.columns import ColumnInputs, build_columns
from coordgan_cli.evaluation.maps import BenchmarkMaps, IdentityMaps, ModelMaps, StoreMaps
from coordgan_cli.metrics.protocol import PAPER_TAU

PROTOCOLS = ("paper", "fullres")
# Layouts of photos scored without a CoordGAN model: no --ckpt/--store needed (the coordinates
# column is then unavailable), the pretrained-backbone columns and cosine-NN join the table, and
# the protocol defaults to fullres (issue 18's: native size, references fused).
PHOTO_DATASETS = ("folder",)
COSINE_DIMS = 128  # principal components of the photos' cosine-NN baseline
VOTES = ("soft", "hard")

# bars() opens a group of progress bars; task(description, total) adds one and returns advance(n).
Task = Callable[[str, Optional[int]], Callable[[int], None]]
Bars = Callable[[], ContextManager[Task]]


@contextmanager
def no_bars() -> Iterator[Task]:
    yield lambda description, total: (lambda n: None)


@dataclass
class EvaluationRequest:
    """One evaluation, as ``coordgan evaluate``'s options give it (see its --help).

    ckpt: a resolved model checkpoint or None; store: precomputed maps or None (one of them is
    needed); dataset_options: keyword options of the layout's loader (``data.benchmarks.
    register_dataset``); matchers: the matcher columns (None: the default ones, see
    ``columns.build_columns``).
    """

    dataset: str
    root: Path
    ckpt: Optional[Path] = None
    store: Optional[Path] = None
    protocol: Optional[str] = None  # None: fullres on PHOTO_DATASETS, else paper
    refs: Optional[list[str]] = None
    queries: Optional[int] = None
    dataset_options: dict = field(default_factory=dict)  # the layout's own settings, to its loader
    vote: str = "soft"
    tau: float = PAPER_TAU
    matchers: Optional[list[str]] = None
    matcher_ckpt: Optional[Path] = None
    no_correlation: bool = False
    work_size: Optional[int] = None  # the feature matcher's working side (None: its default, 0: the protocol's size)
    backbone: Optional[str] = None  # the features / classifier columns' backbone (None: inception)
    backbone_weights: Optional[Path] = None
    fid_real: Optional[Path] = None
    fid_samples: int = 1000
    fid_cache: Optional[Path] = None
    perceptual: str = "stlpips-alex"
    swap_pairs: int = 32
    recon_images: int = 32
    batch: int = 16
    seed: int = 0

    def check_choices(self) -> None:
        """--dataset, --protocol, --vote and --tau (checked before a default model is looked for)."""
        from coordgan_cli.data.benchmarks import available_datasets

        if self.dataset not in available_datasets():
            raise UserError(f"--dataset {self.dataset!r}: unknown; choose one of {', '.join(available_datasets())}")
        if self.protocol is None:
            self.protocol = "fullres" if self.photos else "paper"
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol {self.protocol!r}: choose paper or fullres")
        if self.vote not in VOTES:
            raise UserError(f"--vote {self.vote!r}: choose soft or hard")
        if not self.tau > 0:
            raise UserError(f"--tau must be positive, got {self.tau}")

    @property
    def photos(self) -> bool:
        return self.dataset in PHOTO_DATASETS

    def check(self) -> None:
        """Every mistake in the options as one UserError, before anything is loaded."""
        self.check_choices()
        if self.photos and self.protocol == "paper" and self.ckpt is None and self.store is None:
            raise UserError("--protocol paper scores the coordinate vote on CoordGAN maps: give --ckpt/--model or "
                            "--store, or use --protocol fullres (the default on a labelled folder)")
        if self.ckpt is None and self.store is None and not self.photos:
            raise UserError("no correspondence maps: give --ckpt (a model: maps from its encoder) or --store "
                            "(precomputed maps)")
        for option, path in (("--ckpt", self.ckpt), ("--store", self.store)):
            if path is not None and not path.is_file():
                raise UserError(f"{option} {path}: file not found")
        if self.no_correlation and self.matcher_ckpt is not None:
            raise UserError("--no-correlation skips the matcher that --matcher-ckpt gives: use one or the other")
        if self.no_correlation and self.work_size is not None:
            raise UserError("--work-size sets the feature matcher's resolution, which --no-correlation skips: drop one")
        if self.work_size is not None and self.work_size < 0:
            raise UserError(f"--work-size must be a positive number of pixels (or 0 for each image's own size), "
                            f"got {self.work_size}")
        if self.backbone_weights is not None and not self.backbone_weights.is_file():
            raise UserError(f"{self.backbone_weights}: backbone weights file not found; place the "
                            f"{self.backbone or 'backbone'} weights there (--backbone-weights)")
        if self.matcher_ckpt is not None and not self.matcher_ckpt.is_file():
            raise UserError(f"--matcher-ckpt {self.matcher_ckpt}: file not found")
        if self.fid_real is not None:
            if self.ckpt is None:
                raise UserError("--fid-real needs --ckpt (a generator to sample from)")
            if not self.fid_real.is_dir():
                raise UserError(f"--fid-real {self.fid_real}: folder not found")
            if self.fid_samples < 2:
                raise UserError(f"--fid-samples must be at least 2, got {self.fid_samples}")
        for option, value in (("--swap-pairs", self.swap_pairs), ("--recon-images", self.recon_images)):
            if value < 0:
                raise UserError(f"{option} must be 0 (skip) or more, got {value}")
        if self.batch < 1:
            raise UserError(f"--batch must be at least 1, got {self.batch}")


def resolve_vote(vote: Optional[str], legacy: Optional[str]) -> str:
    """The coordinate vote mode from ``--vote`` or its older spelling ``--matcher soft|hard``."""
    if legacy is not None and legacy not in VOTES:
        if legacy in ("coordinates", "correlation", "ensemble"):
            raise UserError(f"--matcher {legacy}: evaluate scores every matcher in one table (coordinates always; "
                            "correlation and ensemble when --matcher-ckpt M.pt is given); the coordinate vote's "
                            "mode is --vote soft|hard")
        raise UserError(f"--matcher {legacy!r}: in evaluate this is the older name of --vote; choose soft or hard")
    if vote is not None and vote not in VOTES:
        raise UserError(f"--vote {vote!r}: choose soft or hard")
    if vote is not None and legacy is not None and vote != legacy:
        raise UserError(f"--vote {vote} and --matcher {legacy} disagree (--matcher soft|hard is the older name of "
                        "--vote): give one")
    return vote or legacy or "soft"


def resolve_model_option(ckpt: Optional[Path], model_name: Optional[str], store: Optional[Path],
                         info: Callable[[str], None]) -> Optional[Path]:
    """The model checkpoint to evaluate: --ckpt, --model, or (with neither, nor --store) the shipped default."""
    from coordgan_cli.inference import is_default_model, resolve_model

    if ckpt is not None or model_name is not None:
        return resolve_model(ckpt, model_name)
    if store is not None:
        return None
    try:
        path = resolve_model(None, None)
    except UserError as exc:
        raise UserError("give --ckpt (a model: maps from its encoder), --model NAME or --store (precomputed maps); "
                        "this build ships no CoordGAN model to use by default") from exc
    if is_default_model(path):
        info(f"evaluate: the shipped model {path.stem!r} ({path}); --ckpt, --model or --store chooses another")
    return path


def _load_model(request: EvaluationRequest, device: Any) -> Any:
    from coordgan_cli.inference import load_correspondence_model

    if request.ckpt is None:
        return None
    model = load_correspondence_model(request.ckpt, device, allow_generator_only=True)
    if model.encoder is None and request.store is None:
        raise UserError(f"--ckpt {request.ckpt}: a generator checkpoint gives no maps of real images; pass an encoder "
                        "checkpoint, or add --store maps.h5 for the label propagation (the generator then "
                        "serves FID and the swap metrics)")
    return model


def cosine_baseline(model: Any, source: Any, protocol: str) -> Callable:
    """The cosine nearest-neighbour baseline on the encoder's features, in the protocol's signature."""
    features = source if isinstance(source, ModelMaps) else ModelMaps(model)
    if protocol == "paper":
        from coordgan_cli.metrics.protocol import cosine_nn_labels

        return lambda r, q, labels, hw: cosine_nn_labels(features.features(r), features.features(q),
                                                         labels.argmax(axis=1), hw)
    from coordgan_cli.metrics.protocol import cosine_nn_pooled, cosine_pool

    pooled: list = []  # the references' candidates, built at the first query

    def cosine(refs, masks, q, hw):
        if not pooled:
            pooled.append(cosine_pool([(features.features(r), m) for r, m in zip(refs, masks)]))
        return cosine_nn_pooled(pooled[0], features.features(q), hw)

    return cosine


def backbone_cosine_baseline(bench: Benchmark, request: EvaluationRequest, device: Any,
                             dims: int = COSINE_DIMS) -> Callable:
    """Cosine nearest neighbour on a pretrained backbone's hypercolumns (the photos' baseline, in
    the fullres signature): every cell of the query's working grid copies the label of the most
    similar labelled cell of the fused references (their masks resized nearest to the grid), and
    the grid's labels are resized (nearest) to the query. The unit hypercolumns are projected on
    their top ``dims`` principal directions over the references (as the features matcher does):
    the full 3104 Inception channels cost ~25× more per query for a nearest neighbour."""
    import torch
    import torch.nn.functional as F

    from coordgan_cli.backbones import load_backbone
    from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder, pca_basis
    from coordgan_cli.io.images import read_image
    from coordgan_cli.labelling.pretrained import DEFAULT_BACKBONE, DEFAULT_WORKING_SIZE
    from coordgan_cli.metrics.protocol import cosine_nn_pooled, cosine_pool, resize_labels_nearest

    backbone = load_backbone(request.backbone or DEFAULT_BACKBONE, request.backbone_weights, device)
    encoder = HypercolumnEncoder(backbone, request.work_size or DEFAULT_WORKING_SIZE)
    fitted: dict = {}  # the references' candidates and projection, per fold

    def unit(sample) -> torch.Tensor:
        return F.normalize(encoder.encode([read_image(sample.image)])[0], dim=0)

    def project(feats: torch.Tensor) -> np.ndarray:
        mean, basis = fitted["pca"]
        c, h, w = feats.shape
        return ((feats.reshape(c, -1).t() - mean) @ basis).t().reshape(-1, h, w).cpu().numpy()

    def cosine(refs, masks, q, hw):
        key = tuple(r.name for r in refs)
        if fitted.get("key") != key:
            feats = [unit(r) for r in refs]
            fitted["pca"] = pca_basis(torch.cat([f.reshape(f.shape[0], -1) for f in feats], dim=1).t(), dims)
            fitted["pool"] = cosine_pool([(project(f), resize_labels_nearest(m, encoder.grid))
                                          for f, m in zip(feats, masks)])
            fitted["key"] = key
        return resize_labels_nearest(cosine_nn_pooled(fitted["pool"], project(unit(q)), encoder.grid), hw)

    return cosine


def _baselines(request: EvaluationRequest, model: Any, source: Any,
               bench: Optional[Benchmark] = None, device: Any = "cpu") -> tuple[dict[str, Callable], dict[str, str]]:
    """(baselines beside identity, unavailable ones → reason)."""
    if model is not None and model.encoder is not None:
        return {"cosine_nn": cosine_baseline(model, source, request.protocol)}, {}
    if request.photos and request.protocol == "fullres" and bench is not None:
        return {"cosine_nn": backbone_cosine_baseline(bench, request, device)}, {}
    if model is not None:
        return {}, {"cosine_nn": f"{request.ckpt.name} is a generator checkpoint: no encoder features"}
    return {}, {"cosine_nn": "cosine nearest neighbour needs the model's own features (--ckpt); "
                             "a store holds coordinates only"}


def synthetic_extra(bench: Benchmark, source: Any) -> dict:
    """``pck`` / ``epe`` (and the PCK counts) of the maps against a synthetic set's true maps."""
    from coordgan_cli.io.images import image_size
    from coordgan_cli.metrics.protocol import correspondence_accuracy, keypoint_pck

    extra: dict = {}
    if bench.truth_store_path is None:
        extra["pck"] = {"available": False, "reason": f"{bench.root}/correspondence.h5 not found"}
        extra["epe"] = {"available": False, "reason": f"{bench.root}/correspondence.h5 not found"}
        return extra
    truth = StoreMaps(bench.truth_store_path)
    try:
        truth.check(bench.queries)
        keypoints = read_keypoints(bench.keypoints_path) if bench.keypoints_path is not None else None
        acc = correspondence_accuracy(bench, source, truth, keypoints, image_sizes=lambda s: image_size(s.image),
                                      truth_size=lambda s: truth.native_size(s))
    finally:
        truth.close()
    if keypoints is None:
        extra["pck"] = {"available": False, "reason": f"{bench.root}/keypoints.json not found"}
    else:
        extra.update(pck=acc["pck"], pck_pairs=acc["pck_pairs"], pck_keypoints=acc["pck_keypoints"])
        # The same keypoints moved by the identity maps (each point stays at its pixel): the floor
        # a model's PCK has to beat — on roughly aligned images it is already high.
        extra["pck_identity"] = keypoint_pck(bench, IdentityMaps(), keypoints,
                                             image_sizes=lambda s: image_size(s.image))["pck"]
    extra["epe"] = acc["epe"]
    return extra


def evaluate_benchmark(request: EvaluationRequest, *, device: Any = "cpu", info: Callable[[str], None] = lambda m: None,
                       bars: Bars = no_bars) -> dict:
    """Run ``request`` and return the report (the ``--json`` object)."""
    from coordgan_cli.evaluation.model_metrics import model_metrics
    from coordgan_cli.evaluation.protocols import run_fullres, run_paper_columns
    from coordgan_cli.evaluation.report import build_report

    request.check()
    bench = load_benchmark(request.dataset, request.root, refs=request.refs, queries=request.queries,
                           **request.dataset_options)
    if bench.folds and request.protocol != "fullres":
        raise UserError("--leave-one-out is scored with --protocol fullres (one query set over every fold)")
    model = _load_model(request, device)
    if request.store is not None:
        source: Any = StoreMaps(request.store)
        maps_label = f"store {request.store.name}"
    elif model is not None:
        source, maps_label = ModelMaps(model), f"model {request.ckpt.name}"
    else:  # photos without a CoordGAN model: no maps, the coordinates column is unavailable
        source, maps_label = None, "no maps"
    maps = BenchmarkMaps(source, bench.references + bench.queries, maps_label) if source is not None else None
    inputs = ColumnInputs(request.protocol, maps,
                          device, request.vote, request.tau, store=request.store, ckpt=request.ckpt,
                          matcher_ckpt=request.matcher_ckpt, no_correlation=request.no_correlation,
                          work_size=request.work_size, backbone=request.backbone,
                          backbone_weights=request.backbone_weights, photos=request.photos)
    columns = None
    try:
        extra_baselines, unavailable = _baselines(request, model, source, bench, device)
        columns = build_columns(request.matchers, inputs)
        unavailable.update(columns.unavailable)
        if isinstance(source, StoreMaps):
            source.check(bench.references + bench.queries)
        info(f"{request.dataset}: {len(bench.references)} references, {len(bench.queries)} queries — {bench.choice}")
        with bars() as task:
            step = task(f"evaluate ({request.protocol})", len(bench.queries))
            if request.protocol == "paper":
                result = run_paper_columns(bench, source, columns.matchers, tau=request.tau, mode=request.vote,
                                           extra_baselines=extra_baselines, progress=step)
            else:
                result = run_fullres(bench, columns.matchers, extra_baselines=extra_baselines, progress=step)
        extra: dict = {"feature_matcher": inputs.feature_matcher or {"available": False,
                                                                     "reason": "not asked for (--matchers)"}}
        if request.dataset == "synthetic":
            extra.update(synthetic_extra(bench, source))
        extra.update(model_metrics(model, bench, request, device=device, bars=bars))
        return build_report(bench, result, maps_label=maps_label, vote=request.vote, tau=request.tau,
                            unavailable=unavailable, extra=extra, order=columns.order)
    finally:
        if columns is not None:
            columns.close()
        if source is not None:
            source.close()
