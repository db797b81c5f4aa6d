"""The ``coordgan evaluate`` report: the ``--json`` object, the terminal table and summary lines,
and the files ``--out`` writes (results.json, results.csv, results.md, per_class_iou.png)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from coordgan_cli.data.benchmarks import Benchmark
from coordgan_cli.metrics.iou import IoUResult
from coordgan_cli.metrics.protocol import ProtocolResult


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
                 unavailable: dict[str, str], extra: dict, order: Sequence[str] = MATCHER_ORDER) -> dict:
    """The ``--json`` object.

    ``miou`` / ``per_class`` / ``per_reference`` are the coordinate vote on the maps (also
    ``matchers["coordinates"]``); ``matchers`` holds every matcher scored (``correlation``,
    ``ensemble`` when a feature matcher was given), ``baselines`` the identity / cosine-NN ones.
    ``unavailable``: method name → reason, for matchers or baselines that were not computed;
    ``order``: the matcher columns (names not in it are baselines).
    """
    # Without maps (a labelled folder scored with no model or store) the coordinates column is
    # unavailable: the top-level miou / per_class are then null and the classes come from the
    # other columns.
    scored = result.maps or next(iter([*result.matchers.values(), *result.baselines.values()]))
    main = _iou_json(bench, result.maps) if result.maps is not None else {
        "miou": None, "per_class": {_class_key(bench, c): None for c in scored.classes}, "per_reference": {}}
    matchers: dict = {"coordinates": main} if result.maps is not None else {}
    for k, v in result.matchers.items():
        matchers[k] = _iou_json(bench, v)
    baselines: dict = {k: _iou_json(bench, v) for k, v in result.baselines.items()}
    for k, reason in unavailable.items():
        entry = {"available": False, "reason": reason}
        if k in order:
            matchers[k] = entry
        else:
            baselines[k] = entry
    matchers = {k: matchers[k] for k in order if k in matchers}
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
        "classes_scored": len(scored.classes),
        "excluded_classes": [bench.class_names[c] for c in range(1, bench.num_classes) if c not in scored.classes],
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


def model_metric_lines(report: dict) -> list[str]:
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
    for key in ("pck", "pck_identity", "epe"):
        if key in report:
            lines += ["", f"- {key}: `{json.dumps(report[key])}`"]
    for line in model_metric_lines(report):
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


def summary_lines(report: dict) -> list[str]:
    """The lines printed under the table: each matcher's mIoU, PCK / EPE, the model metrics."""
    lines = []
    for name, m in report["matchers"].items():
        if m.get("available", True):
            lines.append(f"mIoU {name}: {100 * m['miou']:.2f} % ({report['protocol']} protocol"
                         + (f", {report['maps']})" if name in ("coordinates", "ensemble") else ", feature matcher)"
                             if name == "correlation" else ")"))
        else:
            lines.append(f"{name}: unavailable — {m['reason']}")
    if isinstance(report.get("pck"), dict) and "available" not in report["pck"]:
        def at(pck: dict) -> str:
            return ", ".join(f"@{a}: {_fmt(v)} %" for a, v in pck.items())

        floor = report.get("pck_identity")
        lines.append(f"PCK {at(report['pck'])}"
                     + (f" (keypoints left in place: {at(floor)})" if isinstance(floor, dict) else ""))
    if isinstance(report.get("epe"), dict) and report["epe"].get("pixels") is not None:
        lines.append(f"EPE {report['epe']['pixels']:.3f} px ({report['epe']['canonical']:.4f} canonical units)")
    return lines + model_metric_lines(report)
