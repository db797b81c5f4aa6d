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

from coordgan_cli.cli._common import get_state, info, make_progress, print_json, warn
from coordgan_cli.data.benchmarks import DATASETS, Benchmark, Sample, load_benchmark, read_keypoints
from coordgan_cli.errors import UserError
from coordgan_cli.metrics.iou import IoUResult
from coordgan_cli.metrics.protocol import PAPER_TAU, ProtocolResult, resize_labels_nearest, resize_map

PROTOCOLS = ("paper", "fullres")
MATCHERS = ("soft", "hard")


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
    """Correspondence maps (structure path + warp MLP) and encoder features from a checkpoint."""

    def __init__(self, ckpt: Path, device) -> None:
        from coordgan_cli.inference import load_correspondence_model

        self.model = load_correspondence_model(ckpt, device)
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


def build_report(bench: Benchmark, result: ProtocolResult, *, maps_label: str, matcher: str, tau: float,
                 unavailable: dict[str, str], extra: dict) -> dict:
    """The ``--json`` object."""
    main = _iou_json(bench, result.maps)
    baselines: dict = {k: _iou_json(bench, v) for k, v in result.baselines.items()}
    for k, reason in unavailable.items():
        baselines[k] = {"available": False, "reason": reason}
    report = {
        "dataset": bench.dataset,
        "protocol": result.protocol,
        "miou": main["miou"],
        "per_class": main["per_class"],
        "per_reference": main["per_reference"],
        "baselines": baselines,
        "maps": maps_label,
        "matcher": {"mode": matcher, "tau": tau},
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
    out = [("maps", {"per_class": report["per_class"], "miou": report["miou"]})]
    for k, v in report["baselines"].items():
        out.append((k, v))
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}"


def render_table(report: dict):
    from rich.table import Table

    methods = _methods(report)
    title = (f"{report['dataset']} — protocol {report['protocol']} "
             f"({'128²' if report['protocol'] == 'paper' else 'native resolution'}, "
             f"{report['matcher']['mode']} vote τ={report['matcher']['tau']:g}) — IoU %")
    table = Table(title=title, caption=f"references: {', '.join(report['references'])}; "
                                       f"{report['queries']} queries; {report['choice']}")
    table.add_column("class")
    for name, m in methods:
        label = f"{name} ({report['maps']})" if name == "maps" else name
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


def _markdown(report: dict) -> str:
    methods = _methods(report)
    lines = [f"# coordgan evaluate — {report['dataset']}, protocol `{report['protocol']}`", "",
             f"Maps: {report['maps']}. Vote: {report['matcher']['mode']}, τ = {report['matcher']['tau']:g}. "
             f"References: {', '.join(report['references'])}; {report['queries']} queries ({report['choice']}).", "",
             "IoU in %:", "",
             "| class | " + " | ".join(n for n, _ in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for cls in report["per_class"]:
        lines.append(f"| {cls} | " + " | ".join(_fmt(m["per_class"][cls]) if "per_class" in m else "n/a"
                                                 for _, m in methods) + " |")
    lines.append(f"| **mean** | " + " | ".join(f"**{_fmt(m['miou'])}**" if m.get("available", True) else "n/a"
                                                for _, m in methods) + " |")
    for name, m in methods:
        if not m.get("available", True):
            lines += ["", f"- {name}: unavailable — {m['reason']}"]
    for key in ("pck", "epe"):
        if key in report:
            lines += ["", f"- {key}: `{json.dumps(report[key])}`"]
    return "\n".join(lines) + "\n"


def bar_chart_png(report: dict) -> bytes:
    """A grouped per-class bar chart (PIL only), one colour per method."""
    from PIL import Image, ImageDraw

    methods = [(n, m) for n, m in _methods(report) if "per_class" in m]
    classes = list(report["per_class"])
    colours = [(46, 110, 200), (230, 140, 40), (60, 170, 90), (170, 60, 160)]
    bar, gap, left, top, height = 10, 8, 60, 40, 260
    group = bar * len(methods) + gap
    width = left + group * max(len(classes), 1) + 20
    label_h = 120
    img = Image.new("RGB", (max(width, 360), top + height + label_h), "white")
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


def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", help=f"Benchmark layout: {' | '.join(DATASETS)}."),
    root: Path = typer.Option(..., "--root", help="Top folder of the benchmark tree (see README for each layout)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Model checkpoint: maps from its encoder + warp MLP."),
    store: Optional[Path] = typer.Option(None, "--store", help="Precomputed maps (HDF5 store, DESIGN §5) — any method."),
    protocol: str = typer.Option("paper", "--protocol", help="paper (128², per-reference, as published) | fullres (ours)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write results.{json,csv,md} and per_class_iou.png here."),
    refs: Optional[str] = typer.Option(None, "--refs", help="Override the references: NAME,NAME,… (path, file name or stem)."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Use only the first N non-reference images as queries."),
    matcher: str = typer.Option("soft", "--matcher", help="soft (softmax vote, as in the paper) | hard (nearest coordinate)."),
    tau: float = typer.Option(PAPER_TAU, "--tau", help="Soft-vote temperature (paper: 0.01)."),
) -> None:
    """Score label propagation on a benchmark: mIoU per class, baselines side by side."""
    state = get_state(ctx)
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: choose paper or fullres")
    if matcher not in MATCHERS:
        raise UserError(f"--matcher {matcher!r}: choose soft or hard")
    if not tau > 0:
        raise UserError(f"--tau must be positive, got {tau}")
    if (ckpt is None) == (store is None):
        raise UserError("give exactly one of --ckpt (a model) or --store (precomputed maps)")
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"--ckpt {ckpt}: file not found")
    ref_list = [r.strip() for r in refs.split(",") if r.strip()] if refs else None
    bench = load_benchmark(dataset, root, refs=ref_list, queries=queries)
    extra_baselines: dict = {}
    unavailable: dict[str, str] = {}
    if ckpt is not None:
        source = ModelMaps(ckpt, state.torch_device())
        maps_label = f"model {ckpt.name}"
        if protocol == "paper":
            from coordgan_cli.metrics.protocol import cosine_nn_labels

            def cosine(r, q, labels, hw, _src=source):
                return cosine_nn_labels(_src.features(r), _src.features(q), labels.argmax(axis=1), hw)

            extra_baselines["cosine_nn"] = cosine
        else:
            unavailable["cosine_nn"] = "computed with --protocol paper only"
    else:
        assert store is not None
        if not store.is_file():
            raise UserError(f"--store {store}: file not found")
        source = StoreMaps(store)
        maps_label = f"store {store.name}"
        unavailable["cosine_nn"] = ("cosine nearest neighbour needs the model's own features (--ckpt); "
                                    "a store holds coordinates only")
    try:
        if isinstance(source, StoreMaps):
            source.check(bench.references + bench.queries)
        info(f"{dataset}: {len(bench.references)} references, {len(bench.queries)} queries — {bench.choice}", state)
        from coordgan_cli.metrics.protocol import run_fullres, run_paper

        with make_progress(state) as progress:
            task = progress.add_task(f"evaluate ({protocol})", total=len(bench.queries), rate="")
            step = lambda n: progress.update(task, advance=n)  # noqa: E731
            if protocol == "paper":
                result = run_paper(bench, source, tau=tau, mode=matcher, extra_baselines=extra_baselines,
                                   progress=step)
            else:
                result = run_fullres(bench, source, tau=tau, mode=matcher, progress=step)
        extra: dict = {}
        if dataset == "synthetic":
            extra.update(_synthetic_extra(bench, source))
        if ckpt is None:
            model_reason = "needs a model (--ckpt); only precomputed maps were given (--store)"
        else:
            model_reason = "not wired into evaluate yet (the FID module metrics/fid.py works offline)"
        extra["generation"] = {"available": False, "reason": f"FID {model_reason}"}
        extra["disentanglement"] = {"available": False, "reason": f"swap distances {model_reason}; "
                                    "identity distance also needs an installed face-identity model"}
        extra["reconstruction"] = {"available": False, "reason": f"encoder reconstruction {model_reason}"}
        report = build_report(bench, result, maps_label=maps_label, matcher=matcher, tau=tau,
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
    lines = [f"mIoU {100 * report['miou']:.2f} % ({report['protocol']} protocol, {report['maps']})"]
    if isinstance(report.get("pck"), dict) and "available" not in report["pck"]:
        lines.append("PCK " + ", ".join(f"@{a}: {_fmt(v)} %" for a, v in report["pck"].items()))
    if isinstance(report.get("epe"), dict) and report["epe"].get("pixels") is not None:
        lines.append(f"EPE {report['epe']['pixels']:.3f} px ({report['epe']['canonical']:.4f} canonical units)")
    for line in lines:
        console.print(line)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
