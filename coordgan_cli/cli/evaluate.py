"""``coordgan evaluate``: label-propagation mIoU on standard benchmarks (the paper's protocol or
ours at full resolution), baselines side by side, and correspondence accuracy on synthetic data."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from coordgan_cli.cli._common import get_state, info, make_progress, print_json
from coordgan_cli.data.benchmarks import DATASETS, Benchmark, Sample, load_benchmark, read_keypoints
from coordgan_cli.errors import UserError
from coordgan_cli.metrics.iou import IoUResult
from coordgan_cli.metrics.protocol import PAPER_TAU, ProtocolResult, resize_labels_nearest, resize_map

PROTOCOLS = ("paper", "fullres")
VOTES = ("soft", "hard")


class StoreMaps:
    """Correspondence maps looked up by name in an HDF5 store (DESIGN §5), resampled on demand."""

    def __init__(self, path: Path) -> None:
        from coordgan_cli.io.store import StoreReader

        self.path = path
        self.reader = StoreReader(path)
        self._rows: dict[str, int] = {}

    def row(self, sample: Sample) -> int:
        if sample.name not in self._rows:
            for key in sample.keys or (sample.name,):
                if key in self.reader:
                    self._rows[sample.name] = self.reader.index(key)
                    break
            else:
                raise UserError(f"{self.path}: no map for {sample.name} (looked up as "
                                f"{', '.join(repr(k) for k in sample.keys)})")
        return self._rows[sample.name]

    def check(self, samples: list[Sample]) -> None:
        """One message naming every sample the store lacks."""
        missing = []
        for s in samples:
            if not any(k in self.reader for k in (s.keys or (s.name,))):
                missing.append(s.name)
        if missing:
            shown = ", ".join(missing[:10]) + (f" … and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise UserError(f"{self.path}: the store has no map for {len(missing)} benchmark image(s): {shown} "
                            f"(its {len(self.reader)} names look like {', '.join(self.reader.names[:3])})")

    def map(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        return resize_map(self.reader.correspondence(self.row(sample)), tuple(size))

    def valid(self, sample: Sample, size: tuple[int, int]) -> Optional[np.ndarray]:
        v = self.reader.valid(self.row(sample))
        if v is None:
            return None
        return resize_labels_nearest(v.astype(np.uint8), tuple(size)).astype(bool)

    def native_size(self, sample: Sample) -> tuple[int, int]:
        return tuple(self.reader.size)  # type: ignore[return-value]

    def close(self) -> None:
        self.reader.close()


class ModelMaps:
    """Correspondence maps (structure path + warp MLP) and encoder features of a loaded
    ``inference.CorrespondenceModel`` (an encoder checkpoint)."""

    def __init__(self, model) -> None:
        self.model = model
        self._maps: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        self._feats: dict[str, np.ndarray] = {}

    def _image(self, sample: Sample) -> np.ndarray:
        from coordgan_cli.io.images import read_image

        return read_image(sample.image)

    def map(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        key = (sample.name, tuple(int(v) for v in size))
        if key not in self._maps:
            self._maps[key] = self.model.correspondence_maps([self._image(sample)], [key[1]])[0]
        return self._maps[key]

    def valid(self, sample: Sample, size: tuple[int, int]) -> Optional[np.ndarray]:
        return None

    def features(self, sample: Sample) -> np.ndarray:
        if sample.name not in self._feats:
            self._feats[sample.name] = self.model.features([self._image(sample)])[0]
        return self._feats[sample.name]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Reporting


def _class_key(bench: Benchmark, c: int) -> str:
    name = bench.class_names[c]
    return name if bench.class_names.count(name) == 1 else f"{c}:{name}"


def _iou_json(bench: Benchmark, res: IoUResult) -> dict:
    return {
        "miou": res.miou,
        "per_class": {_class_key(bench, c): v for c, v in res.per_class.items()},
        "per_reference": {
            name: {"miou": r["miou"], "queries": r["queries"],
                   "per_class": {_class_key(bench, c): v for c, v in r["per_class"].items()}}
            for name, r in res.per_reference.items()
        },
    }


MATCHER_ORDER = ("coordinates", "correlation", "ensemble")


def build_report(bench: Benchmark, result: ProtocolResult, *, maps_label: str, vote: str, tau: float,
                 unavailable: dict[str, str], extra: dict) -> dict:
    """The ``--json`` object.

    ``miou`` / ``per_class`` / ``per_reference`` are the coordinate vote on the maps (also
    ``matchers["coordinates"]``); ``matchers`` holds every matcher scored (``correlation``,
    ``ensemble`` when a feature matcher was given), ``baselines`` the identity / cosine-NN ones.
    ``unavailable``: method name → reason, for matchers or baselines that were not computed.
    """
    main = _iou_json(bench, result.maps)
    matchers: dict = {"coordinates": main}
    for k, v in result.matchers.items():
        matchers[k] = _iou_json(bench, v)
    baselines: dict = {k: _iou_json(bench, v) for k, v in result.baselines.items()}
    for k, reason in unavailable.items():
        entry = {"available": False, "reason": reason}
        if k in MATCHER_ORDER:
            matchers[k] = entry
        else:
            baselines[k] = entry
    matchers = {k: matchers[k] for k in MATCHER_ORDER if k in matchers}
    report = {
        "dataset": bench.dataset,
        "protocol": result.protocol,
        "miou": main["miou"],
        "per_class": main["per_class"],
        "per_reference": main["per_reference"],
        "matchers": matchers,
        "baselines": baselines,
        "maps": maps_label,
        "vote": {"mode": vote, "tau": tau},
        # Older name of "vote" (the coordinate vote's settings), kept for existing readers.
        "matcher": {"mode": vote, "tau": tau},
        "resolution": result.size if result.protocol == "paper" else "native",
        "references": [r.name for r in bench.references],
        "queries": len(bench.queries),
        "choice": bench.choice,
        "classes_scored": len(result.maps.classes),
        "excluded_classes": [bench.class_names[c] for c in sorted(bench.exclude)],
        "values": "fractions in [0, 1]",
    }
    report.update(extra)
    return report


def _methods(report: dict) -> list[tuple[str, dict]]:
    """(column name, entry) for every matcher then every baseline; entries without ``per_class``
    are unavailable."""
    matchers = report.get("matchers") or {"coordinates": {"per_class": report["per_class"], "miou": report["miou"]}}
    return list(matchers.items()) + list(report["baselines"].items())


def _fmt(v) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}"


def render_table(report: dict):
    from rich.table import Table

    methods = _methods(report)
    title = (f"{report['dataset']} — protocol {report['protocol']} "
             f"({'128²' if report['protocol'] == 'paper' else 'native resolution'}, "
             f"{report['vote']['mode']} vote τ={report['vote']['tau']:g}) — IoU %")
    table = Table(title=title, caption=f"references: {', '.join(report['references'])}; "
                                       f"{report['queries']} queries; {report['choice']}")
    table.add_column("class")
    for name, m in methods:
        label = f"{name} ({report['maps']})" if name == "coordinates" else name
        table.add_column(label, justify="right")
    for cls in report["per_class"]:
        table.add_row(cls, *[_fmt(m["per_class"].get(cls)) if "per_class" in m else "n/a" for _, m in methods])
    table.add_section()
    table.add_row(f"mean ({report['classes_scored']} classes)",
                  *[_fmt(m.get("miou")) if m.get("available", True) else "n/a" for _, m in methods], style="bold")
    return table


def _csv_text(report: dict) -> str:
    methods = _methods(report)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class"] + [name for name, _ in methods])
    for cls in report["per_class"]:
        writer.writerow([cls] + ["" if "per_class" not in m else f"{m['per_class'][cls]:.6f}" for _, m in methods])
    writer.writerow(["mean"] + ["" if not m.get("available", True) else f"{m['miou']:.6f}" for _, m in methods])
    return buf.getvalue()


def _model_metric_lines(report: dict) -> list[str]:
    """Plain-text lines for FID, disentanglement and reconstruction (table footer, markdown)."""
    lines = []
    fid = report.get("fid")
    if isinstance(fid, dict):
        if fid.get("available", True):
            lines.append(f"FID {fid['value']:.2f} ({fid['samples']} samples vs {fid['real_images']} real images in "
                         f"{fid['real_folder']}; compare only at equal sample counts)")
        else:
            lines.append(f"FID: unavailable — {fid['reason']}")
    dis = report.get("disentanglement")
    if isinstance(dis, dict):
        if dis.get("available", True):
            t, st = dis["texture_swap"], dis["structure_swap"]
            lines.append(f"disentanglement ({dis['perceptual']}, {t['pairs']} pairs): texture swap "
                         f"{t['mean']:.4f} ± {t['std']:.4f} (lower keeps structure), structure swap "
                         f"{st['mean']:.4f} ± {st['std']:.4f}; identity: unavailable — {dis['identity']['reason']}")
        else:
            lines.append(f"disentanglement: unavailable — {dis['reason']}")
    rec = report.get("reconstruction")
    if isinstance(rec, dict):
        if rec.get("available", True):
            psnr = "exact" if rec["psnr"] is None else f"{rec['psnr']:.2f} dB"
            lines.append(f"reconstruction ({rec['images']} images at {rec['size']}²): MSE {rec['mse']:.5f} "
                         f"(PSNR {psnr}), {rec['perceptual_backend']} {rec['perceptual']['mean']:.4f}")
        else:
            lines.append(f"reconstruction: unavailable — {rec['reason']}")
    return lines


def _markdown(report: dict) -> str:
    methods = _methods(report)
    lines = [f"# coordgan evaluate — {report['dataset']}, protocol `{report['protocol']}`", "",
             f"Maps: {report['maps']}. Coordinate vote: {report['vote']['mode']}, τ = {report['vote']['tau']:g}. "
             f"References: {', '.join(report['references'])}; {report['queries']} queries ({report['choice']}).", "",
             "IoU in %:", "",
             "| class | " + " | ".join(n for n, _ in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for cls in report["per_class"]:
        lines.append(f"| {cls} | " + " | ".join(_fmt(m["per_class"][cls]) if "per_class" in m else "n/a"
                                                 for _, m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(m['miou'])}**" if m.get("available", True) else "n/a"
                                                for _, m in methods) + " |")
    for name, m in methods:
        if not m.get("available", True):
            lines += ["", f"- {name}: unavailable — {m['reason']}"]
    for key in ("pck", "epe"):
        if key in report:
            lines += ["", f"- {key}: `{json.dumps(report[key])}`"]
    for line in _model_metric_lines(report):
        lines += ["", f"- {line}"]
    return "\n".join(lines) + "\n"


def bar_chart_png(report: dict) -> bytes:
    """A grouped per-class bar chart (PIL only), one colour per method."""
    from PIL import Image, ImageDraw

    methods = [(n, m) for n, m in _methods(report) if "per_class" in m]
    classes = list(report["per_class"])
    colours = [(46, 110, 200), (230, 140, 40), (60, 170, 90), (170, 60, 160), (200, 60, 60), (120, 120, 120)]
    bar, gap, left, top, height = 10, 8, 60, 40, 260
    group = bar * len(methods) + gap
    width = left + group * max(len(classes), 1) + 20
    label_h = 120
    img = Image.new("RGB", (max(width, left + 240 + 110 * len(methods)), top + height + label_h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 8), f"{report['dataset']} / {report['protocol']}: per-class IoU", fill="black")
    for i, (name, _m) in enumerate(methods):
        x = left + 220 + i * 110
        draw.rectangle([x, 10, x + 10, 20], fill=colours[i % len(colours)])
        draw.text((x + 14, 8), name, fill="black")
    base = top + height
    for t in range(0, 101, 20):
        y = base - height * t / 100
        draw.line([left - 4, y, img.width - 10, y], fill=(220, 220, 220))
        draw.text((8, y - 6), f"{t}%", fill="black")
    for ci, cls in enumerate(classes):
        x0 = left + ci * group
        for mi, (_name, m) in enumerate(methods):
            v = max(0.0, min(1.0, m["per_class"][cls]))
            x = x0 + mi * bar
            draw.rectangle([x, base - height * v, x + bar - 2, base], fill=colours[mi % len(colours)])
        # Class names written vertically below the bars.
        text = cls[:18]
        tw = int(draw.textlength(text)) + 4
        label = Image.new("RGB", (tw, 12), "white")
        ImageDraw.Draw(label).text((2, 0), text, fill="black")
        img.paste(label.rotate(90, expand=True), (x0 + 2, base + 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_outputs(out_dir: Path, report: dict) -> list[Path]:
    """results.json, results.csv, results.md and per_class_iou.png, each written atomically."""
    from coordgan_cli.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.csv", out_dir / "results.md", out_dir / "per_class_iou.png"]
    atomic_write_json(paths[0], report)
    atomic_write_text(paths[1], _csv_text(report))
    atomic_write_text(paths[2], _markdown(report))
    atomic_write_bytes(paths[3], bar_chart_png(report))
    return paths


# --------------------------------------------------------------------------------------------
# The command


def _synthetic_extra(bench: Benchmark, source: StoreMaps) -> dict:
    from coordgan_cli.io.images import image_size
    from coordgan_cli.metrics.protocol import correspondence_accuracy

    extra: dict = {}
    if bench.truth_store_path is None:
        extra["pck"] = {"available": False, "reason": f"{bench.root}/correspondence.h5 not found"}
        extra["epe"] = {"available": False, "reason": f"{bench.root}/correspondence.h5 not found"}
        return extra
    truth = StoreMaps(bench.truth_store_path)
    try:
        truth.check(bench.queries)
        keypoints = read_keypoints(bench.keypoints_path) if bench.keypoints_path is not None else None
        acc = correspondence_accuracy(bench, source, truth, keypoints,
                                      image_sizes=lambda s: image_size(s.image),
                                      truth_size=lambda s: truth.native_size(s))
    finally:
        truth.close()
    if keypoints is None:
        extra["pck"] = {"available": False, "reason": f"{bench.root}/keypoints.json not found"}
    else:
        extra["pck"] = acc["pck"]
        extra["pck_pairs"] = acc["pck_pairs"]
        extra["pck_keypoints"] = acc["pck_keypoints"]
    extra["epe"] = acc["epe"]
    return extra


def _default_fid_cache() -> Path:
    """``$XDG_CACHE_HOME/coordgan/fid`` (``~/.cache/coordgan/fid``): real-set FID statistics."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coordgan" / "fid"


def _resolve_vote(vote: Optional[str], legacy: Optional[str]) -> str:
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


def _count_option(value: int, option: str) -> int:
    if value < 0:
        raise UserError(f"{option} must be 0 (skip) or more, got {value}")
    return value


def _resolve_model_option(ckpt: Optional[Path], model_name: Optional[str], store: Optional[Path],
                          state) -> Optional[Path]:
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
        info(f"evaluate: the shipped model {path.stem!r} ({path}); --ckpt, --model or --store chooses another", state)
    return path


def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", help=f"Benchmark layout: {' | '.join(DATASETS)}."),
    root: Path = typer.Option(..., "--root", help="Top folder of the benchmark tree (see README for each layout)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Model checkpoint. An encoder checkpoint gives the maps "
                                        "(encoder + warp MLP), the cosine-NN baseline and reconstruction; its "
                                        "generator (or a generator checkpoint with --store) gives FID and swaps."),
    store: Optional[Path] = typer.Option(None, "--store", help="Precomputed maps (HDF5 store, DESIGN §5) — any method. "
                                         "With --ckpt too, the maps come from the store."),
    model_name: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see `coordgan "
                                             "models`) in place of --ckpt. With neither --ckpt nor --store, the "
                                             "shipped default model is used."),
    protocol: str = typer.Option("paper", "--protocol", help="paper (128², per-reference, as published) | fullres (ours)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write results.{json,csv,md} and per_class_iou.png here."),
    refs: Optional[str] = typer.Option(None, "--refs", help="Override the references: NAME,NAME,… (path, file name or stem)."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Use only the first N non-reference images as queries."),
    vote: Optional[str] = typer.Option(None, "--vote", help="Coordinate vote: soft (softmax vote, as in the paper; "
                                       "default) | hard (nearest coordinate)."),
    legacy_matcher: Optional[str] = typer.Option(None, "--matcher", hidden=True,
                                                 help="Older name of --vote (soft|hard)."),
    matcher_ckpt: Optional[Path] = typer.Option(None, "--matcher-ckpt", help="Feature matcher checkpoint (`coordgan "
                                                "train-matcher`'s latest.pt): adds the correlation and ensemble "
                                                "matchers to the table (default: the shipped matcher, if any)."),
    work_size: Optional[int] = typer.Option(None, "--work-size", help="Shorter side (px) at which the feature "
                                            "matcher sees references and queries (probabilities carried back to the "
                                            "protocol's size). Default: its training size; 0: the protocol's size."),
    no_correlation: bool = typer.Option(False, "--no-correlation", help="Skip the correlation and ensemble "
                                        "matchers (the slow part on a CPU)."),
    tau: float = typer.Option(PAPER_TAU, "--tau", help="Soft-vote temperature (paper: 0.01)."),
    fid_real: Optional[Path] = typer.Option(None, "--fid-real", help="Folder of real images: FID of generated samples "
                                            "against it (needs --ckpt; offline Inception, statistics cached)."),
    fid_samples: int = typer.Option(1000, "--fid-samples", help="Generated samples for FID (the usual protocol: 50000; CPU runs use fewer — compare only at equal counts)."),
    fid_cache: Optional[Path] = typer.Option(None, "--fid-cache", help="Cache folder for real-set FID statistics "
                                             "(default: ~/.cache/coordgan/fid)."),
    perceptual: str = typer.Option("stlpips-alex", "--perceptual", help="Perceptual distance for disentanglement and "
                                   "reconstruction: stlpips-alex | stlpips-vgg (offline) | lpips-alex | lpips-vgg "
                                   "(need the torchvision backbone file)."),
    swap_pairs: int = typer.Option(32, "--swap-pairs", help="Sampled (s, s', t, t') draws for the disentanglement "
                                   "swap distances (needs --ckpt; 0 skips)."),
    recon_images: int = typer.Option(32, "--recon-images", help="Benchmark images (references first) for the "
                                     "encoder reconstruction error (needs an encoder --ckpt; 0 skips)."),
    batch: int = typer.Option(16, "--batch", help="Batch size for generation, FID and reconstruction."),
) -> None:
    """Score label propagation on a benchmark — every matcher (coordinates, correlation, ensemble)
    beside the identity and cosine-NN baselines — plus FID, swap disentanglement and encoder
    reconstruction for a model."""
    state = get_state(ctx)
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: choose paper or fullres")
    mode = _resolve_vote(vote, legacy_matcher)
    if not tau > 0:
        raise UserError(f"--tau must be positive, got {tau}")
    ckpt = _resolve_model_option(ckpt, model_name, store, state)
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"--ckpt {ckpt}: file not found")
    if store is not None and not store.is_file():
        raise UserError(f"--store {store}: file not found")
    if no_correlation and matcher_ckpt is not None:
        raise UserError("--no-correlation skips the matcher that --matcher-ckpt gives: use one or the other")
    if no_correlation and work_size is not None:
        raise UserError("--work-size sets the feature matcher's resolution, which --no-correlation skips: drop one")
    if matcher_ckpt is not None and not matcher_ckpt.is_file():
        raise UserError(f"--matcher-ckpt {matcher_ckpt}: file not found")
    if fid_real is not None:
        if ckpt is None:
            raise UserError("--fid-real needs --ckpt (a generator to sample from)")
        if not fid_real.is_dir():
            raise UserError(f"--fid-real {fid_real}: folder not found")
        if fid_samples < 2:
            raise UserError(f"--fid-samples must be at least 2, got {fid_samples}")
    _count_option(swap_pairs, "--swap-pairs")
    _count_option(recon_images, "--recon-images")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    ref_list = [r.strip() for r in refs.split(",") if r.strip()] if refs else None
    bench = load_benchmark(dataset, root, refs=ref_list, queries=queries)
    device = state.torch_device()

    model = None
    if ckpt is not None:
        from coordgan_cli.inference import load_correspondence_model

        model = load_correspondence_model(ckpt, device, allow_generator_only=True)
        if model.encoder is None and store is None:
            raise UserError(f"--ckpt {ckpt}: a generator checkpoint gives no maps of real images; pass an encoder "
                            "checkpoint, or add --store maps.h5 for the label propagation (the generator then "
                            "serves FID and the swap metrics)")

    extra_baselines: dict = {}
    unavailable: dict[str, str] = {}
    if store is not None:
        source = StoreMaps(store)
        maps_label = f"store {store.name}"
    else:
        source = ModelMaps(model)
        maps_label = f"model {ckpt.name}"
    if model is not None and model.encoder is not None:
        features = source if isinstance(source, ModelMaps) else ModelMaps(model)
        if protocol == "paper":
            from coordgan_cli.metrics.protocol import cosine_nn_labels

            def cosine(r, q, labels, hw, _src=features):
                return cosine_nn_labels(_src.features(r), _src.features(q), labels.argmax(axis=1), hw)
        else:
            from coordgan_cli.metrics.protocol import cosine_nn_pooled, cosine_pool

            pooled: list = []  # the references' candidates, built at the first query

            def cosine(refs, masks, q, hw, _src=features):
                if not pooled:
                    pooled.append(cosine_pool([(_src.features(r), m) for r, m in zip(refs, masks)]))
                return cosine_nn_pooled(pooled[0], _src.features(q), hw)

        extra_baselines["cosine_nn"] = cosine
    elif model is not None:
        unavailable["cosine_nn"] = f"{ckpt.name} is a generator checkpoint: no encoder features"
    else:
        unavailable["cosine_nn"] = ("cosine nearest neighbour needs the model's own features (--ckpt); "
                                    "a store holds coordinates only")

    correlation = None
    correlation_info: dict
    try:
        from coordgan_cli.inference import resolve_matcher

        if no_correlation:
            raise UserError("skipped (--no-correlation)")
        matcher_path = resolve_matcher(matcher_ckpt)
    except UserError as exc:
        matcher_path = None
        reason = exc.message if no_correlation else f"no feature matcher: {exc.message}"
        unavailable["correlation"] = reason
        unavailable["ensemble"] = reason
        correlation_info = {"available": False, "reason": reason}
    if matcher_path is not None:
        from coordgan_cli.io.checkpoint import file_sha256
        from coordgan_cli.metrics.protocol import FeatureCorrelation
        from coordgan_cli.training.matcher import load_matcher, matcher_work_size

        network, mcfg = load_matcher(matcher_path, device)
        matcher_size = matcher_work_size(matcher_path, mcfg, work_size)
        correlation = FeatureCorrelation(network, tau=mcfg.tau, k=mcfg.k, patch=mcfg.patch, device=device,
                                         work_size=matcher_size)
        correlation_info = {"checkpoint": str(matcher_path), "sha256": file_sha256(matcher_path), "tau": mcfg.tau,
                            "k": mcfg.k, "patch": mcfg.patch, "work_size": matcher_size,
                            "resolution": 128 if protocol == "paper" else "native",
                            "ensemble": "mean of the coordinate vote's class shares and the correlation's"}

    try:
        if isinstance(source, StoreMaps):
            source.check(bench.references + bench.queries)
        info(f"{dataset}: {len(bench.references)} references, {len(bench.queries)} queries — {bench.choice}", state)
        from coordgan_cli.metrics.protocol import run_fullres, run_paper

        with make_progress(state) as progress:
            task = progress.add_task(f"evaluate ({protocol})", total=len(bench.queries), rate="")
            step = lambda n: progress.update(task, advance=n)  # noqa: E731
            if protocol == "paper":
                result = run_paper(bench, source, tau=tau, mode=mode, extra_baselines=extra_baselines,
                                   correlation=correlation, progress=step)
            else:
                result = run_fullres(bench, source, tau=tau, mode=mode, correlation=correlation,
                                     extra_baselines=extra_baselines, progress=step)
        extra: dict = {"feature_matcher": correlation_info}
        if dataset == "synthetic":
            extra.update(_synthetic_extra(bench, source))
        extra.update(_model_metrics(model, bench, state, fid_real=fid_real, fid_samples=fid_samples,
                                    fid_cache=fid_cache, perceptual=perceptual, swap_pairs=swap_pairs,
                                    recon_images=recon_images, batch=batch))
        report = build_report(bench, result, maps_label=maps_label, vote=mode, tau=tau,
                              unavailable=unavailable, extra=extra)
    finally:
        source.close()
    if out is not None:
        written = write_outputs(out, report)
        info(f"wrote {', '.join(str(p) for p in written)}", state)
    if as_json:
        print_json(report)
        return
    from rich.console import Console

    console = Console()
    console.print(render_table(report))
    lines = []
    for name, m in report["matchers"].items():
        if m.get("available", True):
            lines.append(f"mIoU {name}: {100 * m['miou']:.2f} % ({report['protocol']} protocol"
                         + (f", {report['maps']})" if name != "correlation" else ", feature matcher)"))
        else:
            lines.append(f"{name}: unavailable — {m['reason']}")
    if isinstance(report.get("pck"), dict) and "available" not in report["pck"]:
        lines.append("PCK " + ", ".join(f"@{a}: {_fmt(v)} %" for a, v in report["pck"].items()))
    if isinstance(report.get("epe"), dict) and report["epe"].get("pixels") is not None:
        lines.append(f"EPE {report['epe']['pixels']:.3f} px ({report['epe']['canonical']:.4f} canonical units)")
    lines.extend(_model_metric_lines(report))
    for line in lines:
        console.print(line, highlight=False, markup=False)


def _model_metrics(model, bench: Benchmark, state, *, fid_real: Optional[Path], fid_samples: int,
                   fid_cache: Optional[Path], perceptual: str, swap_pairs: int, recon_images: int,
                   batch: int) -> dict:
    """``fid``, ``disentanglement`` and ``reconstruction`` entries (each {"available": False,
    "reason"} when not computed)."""
    from coordgan_cli.metrics.generation import (IDENTITY_UNAVAILABLE, generated_fid, reconstruction_errors,
                                                 swap_distances)

    out: dict = {}
    no_model = "needs a model (--ckpt); only precomputed maps were given (--store)"
    if model is None:
        out["fid"] = {"available": False, "reason": f"FID {no_model}"}
        out["disentanglement"] = {"available": False, "reason": f"swap distances {no_model}",
                                  "identity": {"available": False, "reason": IDENTITY_UNAVAILABLE}}
        out["reconstruction"] = {"available": False, "reason": f"encoder reconstruction {no_model}"}
        return out
    device = state.torch_device()
    if fid_real is None:
        out["fid"] = {"available": False, "reason": "not asked for: pass --fid-real DIR (a folder of real images)"}
    else:
        with make_progress(state) as progress:
            real = progress.add_task("FID real images", total=None, rate="")
            fake = progress.add_task("FID generated", total=fid_samples, rate="")
            out["fid"] = generated_fid(model, fid_real, samples=fid_samples, seed=state.seed, device=device,
                                       cache_dir=fid_cache if fid_cache is not None else _default_fid_cache(),
                                       batch_size=batch, on_real=lambda n: progress.update(real, advance=n),
                                       on_fake=lambda n: progress.update(fake, advance=n))
    distance = None
    if swap_pairs > 0 or (recon_images > 0 and model.encoder is not None):
        from coordgan_cli.perceptual import build_perceptual

        distance = build_perceptual(perceptual, device)
    if swap_pairs == 0:
        out["disentanglement"] = {"available": False, "reason": "skipped (--swap-pairs 0)",
                                  "identity": {"available": False, "reason": IDENTITY_UNAVAILABLE}}
    else:
        with make_progress(state) as progress:
            task = progress.add_task("swap pairs", total=swap_pairs, rate="")
            # A seed stream of its own, so changing --fid-samples does not change the swap pairs.
            out["disentanglement"] = swap_distances(model, distance, pairs=swap_pairs, seed=state.seed + 1_000_003,
                                                    batch_size=batch,
                                                    on_batch=lambda n: progress.update(task, advance=n))
    if model.encoder is None:
        out["reconstruction"] = {"available": False, "reason": f"{model.checkpoint_path.name} is a generator "
                                 "checkpoint: reconstruction needs an encoder checkpoint"}
    elif recon_images == 0:
        out["reconstruction"] = {"available": False, "reason": "skipped (--recon-images 0)"}
    else:
        from coordgan_cli.io.images import read_image

        samples = (bench.references + bench.queries)[:recon_images]
        with make_progress(state) as progress:
            task = progress.add_task("reconstruction", total=len(samples), rate="")
            rec = reconstruction_errors(model, [read_image(s.image) for s in samples], distance, batch_size=batch,
                                        on_batch=lambda n: progress.update(task, advance=n))
        rec["names"] = [s.name for s in samples]
        out["reconstruction"] = rec
    return out


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
