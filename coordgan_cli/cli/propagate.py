"""``coordgan propagate``: label a folder from a few annotated references.

Parse, check every input up front (so a mistake is one clear error before any output), then
stream the queries one at a time: map → exact vote (``correspondence.vote``) → files. With
``--matcher correlation`` a trained feature matcher replaces the maps (CoCosNet correlation,
``correspondence.correlation``); ``--matcher ensemble`` averages both votes' class probabilities
(``correspondence.ensemble``). Each
finished query is recorded in ``OUT/progress.jsonl``; a rerun skips recorded queries whose label
PNG exists, and the COCO files and the report are assembled from those records at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Optional

import numpy as np
import typer

from coordgan_cli.cli._common import AppState, get_state, info, print_json, track, warn
from coordgan_cli.errors import UserError
from coordgan_cli.io.jsonfile import read_json

PROGRESS = "progress.jsonl"
MATCHERS = ("coordinates", "correlation", "ensemble")


@dataclass
class Reference:
    image: Path
    name: str                      # key in the store / COCO files
    mask: np.ndarray               # (H, W) uint8 at the image's own size
    size: tuple[int, int]          # (H, W) of the image
    correspondence: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None


# ---------------------------------------------------------------------------------------------
# Inputs


def _read_pairs(path: Path) -> list[tuple[Path, Optional[Path]]]:
    """A pairs file: one reference per line, 'image mask' (whitespace, comma or tab separated;
    the mask may be left out when --ref-coco gives it). Relative paths are relative to the file."""
    if not path.is_file():
        raise UserError(f"{path}: --refs file not found")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in line.replace(",", " ").replace("\t", " ").split(" ") if p]
        if len(parts) > 2:
            raise UserError(f"{path}:{n}: expected 'image mask', got {len(parts)} fields")
        img = Path(parts[0]) if Path(parts[0]).is_absolute() else path.parent / parts[0]
        mask = None
        if len(parts) == 2:
            mask = Path(parts[1]) if Path(parts[1]).is_absolute() else path.parent / parts[1]
        pairs.append((img, mask))
    if not pairs:
        raise UserError(f"{path}: no references listed")
    return pairs


def _find_labels_file(masks: list[Path]) -> Optional[Path]:
    for mask in masks:
        for folder in (mask.parent, mask.parent.parent):
            candidate = folder / "labels.json"
            if candidate.is_file():
                return candidate
    return None


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def resample_map(correspondence: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resample of a (2, h, w) map to (2, H, W) (pixel centres aligned)."""
    import cv2

    if correspondence.shape[1:] == tuple(size):
        return correspondence
    return np.stack([cv2.resize(np.ascontiguousarray(c, dtype=np.float32), (size[1], size[0]),
                                interpolation=cv2.INTER_LINEAR) for c in correspondence])


def _name_candidates(rel: str) -> list[str]:
    """Store keys to try for an image named ``rel``: the name, then its shorter path tails
    ("x/images/sub/a.png" → "images/sub/a.png" → "sub/a.png" → "a.png"), since a store names
    images relative to its own folder, which may sit below the list file's folder."""
    parts = PurePosixPath(rel).parts
    return [str(PurePosixPath(*parts[i:])) for i in range(len(parts))]


def _output_stem(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix(""))


class MapSource:
    """Correspondence maps from a store (by name) or from a model (structure path)."""

    def __init__(self, store: Optional[Path], ckpt: Optional[Path], device, write_back: bool) -> None:
        self.store_path = store
        self.reader = None
        self.model = None
        if store is not None:
            from coordgan_cli.io.store import StoreReader

            if not store.is_file():
                raise UserError(f"{store}: --store file not found")
            self.reader = StoreReader(store, mode="r+" if write_back else "r")
        else:
            from coordgan_cli.inference import load_correspondence_model

            if ckpt is None:
                raise UserError("no correspondence maps: pass --store maps.h5 (e.g. from `coordgan invert` or "
                                "`coordgan synth`) or --ckpt with an encoder checkpoint")
            self.model = load_correspondence_model(ckpt, device)

    def store_name(self, candidates: list[str], what: str) -> str:
        for name in candidates:
            if name in self.reader:
                return name
        raise UserError(f"{self.store_path}: {what} is not in the store (looked for "
                        f"{' or '.join(repr(c) for c in dict.fromkeys(candidates))})")

    def maps(self, image: Optional[np.ndarray], name_candidates: list[str], size: tuple[int, int], what: str
             ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[int]]:
        """(map (2, H, W) at ``size``, valid (H, W) | None, store row | None)."""
        if self.reader is not None:
            row = self.reader.index(self.store_name(name_candidates, what))
            cmap = resample_map(self.reader.correspondence(row), size)
            valid = self.reader.valid(row)
            if valid is not None and valid.shape != tuple(size):
                valid = _resize_nearest(valid.astype(np.uint8), size).astype(bool)
            return cmap, valid, row
        return self.model.correspondence_maps([image], [size])[0], None, None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


# ---------------------------------------------------------------------------------------------
# Progress records


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _load_progress(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """name → {"offset": byte offset of its record line, "mean_confidence", "low_fraction"}.

    Only these few numbers stay in memory; full records (annotations) are re-read by offset when
    the COCO files are assembled.
    """
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    with open(path, "rb") as handle:
        first = True
        while True:
            offset = handle.tell()
            line = handle.readline()
            if not line:
                break
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                first = False
                continue  # a line torn by a killed run: that query is simply redone
            if first and "settings" in rec:
                if rec["settings"] != key:
                    raise UserError(f"{path}: this output folder was made with other references or settings; "
                                    "use a new --out folder (or delete progress.jsonl to start over)")
            elif "name" in rec:
                records[rec["name"]] = _light(rec, offset)
            first = False
    return records


def _light(rec: dict[str, Any], offset: int) -> dict[str, Any]:
    return {"offset": offset, "mean_confidence": rec["mean_confidence"], "low_fraction": rec["low_fraction"]}


def _append(handle, record: dict[str, Any]) -> int:
    """Append one record line durably; returns its byte offset."""
    handle.seek(0, os.SEEK_END)
    offset = handle.tell()
    handle.write((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())
    return offset


def _records(path: Path, offsets: list[int]) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            yield json.loads(handle.readline())


# ---------------------------------------------------------------------------------------------
# Outputs assembled at the end (streamed: flat memory for any number of queries)


def _write_coco_stream(path: Path, progress: Path, offsets: list[int], categories: list[dict[str, Any]],
                       key: str, description: str) -> None:
    """Write a COCO file from the per-query records without holding all annotations at once."""
    from coordgan_cli.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write('{"info": ' + json.dumps({"description": description, "version": "1.0"}) + ', "licenses": [], ')
        out.write('"images": [')
        for i, rec in enumerate(_records(progress, offsets)):
            out.write(("," if i else "") + json.dumps(rec["image"], separators=(",", ":")))
        out.write('], "annotations": [')
        next_id = 1
        for rec in _records(progress, offsets):
            for ann in rec.get(key, []):
                out.write(("" if next_id == 1 else ",") + json.dumps(dict(ann, id=next_id), separators=(",", ":")))
                next_id += 1
        out.write('], "categories": ' + json.dumps(categories) + "}\n")


# ---------------------------------------------------------------------------------------------
# The command


def propagate(
    ctx: typer.Context,
    ref: list[Path] = typer.Option([], "--ref", help="Reference image (repeat for several)."),
    mask: list[Path] = typer.Option([], "--mask", help="Its mask: palette/greyscale id PNG or .npy (repeat, in --ref order)."),
    queries: str = typer.Option(..., "--queries", help="Images to label: a folder, a text file of paths, or - (stdin)."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: a rerun skips finished queries)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Encoder checkpoint giving the maps (when no --store). "
                                        "Default: the shipped CoordGAN model, if this build has one."),
    model: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see `coordgan "
                                        "models`) giving the maps, instead of --ckpt."),
    store: Optional[Path] = typer.Option(None, "--store", help="Correspondence store (DESIGN §5) holding the maps of "
                                         "queries and references, keyed by path relative to their folder."),
    refs: Optional[Path] = typer.Option(None, "--refs", help="Text file of references: 'image mask' per line."),
    ref_coco: Optional[Path] = typer.Option(None, "--ref-coco", help="COCO JSON with the references' masks (CVAT, Label "
                                            "Studio exports); images matched by file_name."),
    labels_path: Optional[Path] = typer.Option(None, "--labels", help="labels.json naming the class ids."),
    mode: str = typer.Option("soft", "--mode", help="soft (τ-weighted vote over all reference pixels) | hard (nearest)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Soft-vote temperature in canonical units. Default: "
                                        "0.01 × 128 / S for references of side S px (the paper's 0.01 at 128 px, "
                                        "scaled so a vote is as sharp as a pixel at any resolution)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Mark pixels whose winning vote share "
                                                   "is below this as 255 (ignore)."),
    resize_mask: bool = typer.Option(False, "--resize-mask", help="Resize a mask whose size differs from its image (nearest)."),
    polygons: bool = typer.Option(False, "--polygons", help="COCO segmentations as polygons instead of RLE."),
    ref_keypoints: Optional[Path] = typer.Option(None, "--ref-keypoints", help="COCO keypoints of the references: "
                                                 "transfer them to every query (OUT/keypoints.json)."),
    matcher: str = typer.Option("coordinates", "--matcher", help="coordinates (vote in canonical-coordinate space; "
                                "needs maps) | correlation (a trained feature matcher's CoCosNet correlation; no "
                                "maps) | ensemble (average of both votes' class probabilities)."),
    matcher_ckpt: Optional[Path] = typer.Option(None, "--matcher-ckpt", help="Feature matcher checkpoint (the "
                                                "latest.pt of `coordgan train-matcher`) for --matcher correlation/"
                                                "ensemble; its recipe's tau, k and patch drive the correlation."),
    work_size: Optional[int] = typer.Option(None, "--work-size", help="Shorter side (px) at which --matcher correlation/"
                                            "ensemble run the matcher; labels are carried back to each image's own "
                                            "size. Default: the matcher's training size; 0: each image's own size."),
    report_limit: int = typer.Option(500, "--report-limit", help="Picture rows in report.html (least confident first)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Transfer reference masks to every query image at its own resolution: palette PNGs +
    labels.json, COCO annotations.json, overlays, confidence heat maps and report.html."""
    state = get_state(ctx)
    summary = run_propagate(
        state, ref=ref, mask=mask, queries=queries, out=out, ckpt=ckpt, model=model, store=store, refs=refs,
        ref_coco=ref_coco, labels_path=labels_path, mode=mode, tau=tau, min_confidence=min_confidence,
        resize_mask=resize_mask, polygons=polygons, ref_keypoints=ref_keypoints, matcher=matcher,
        matcher_ckpt=matcher_ckpt, report_limit=report_limit, work_size=work_size)
    if json_out:
        print_json(summary)
        return
    finished, mean_conf = summary["count"], summary["mean_confidence"]
    info(f"labelled {finished} image(s) ({summary['new']} new, {summary['resumed']} from an earlier run, "
         f"{len(summary['skipped'])} skipped) in {summary['seconds']:.1f} s; mean confidence "
         f"{mean_conf:.3f}" if mean_conf is not None else "no images labelled", state)
    info(f"outputs in {out}: labels/, annotations.json, overlays/, confidence/, report.html", state)


def run_propagate(
    state: AppState, *, ref: list[Path], mask: list[Path], queries: str, out: Path, ckpt: Optional[Path] = None,
    model: Optional[str] = None, store: Optional[Path] = None, refs: Optional[Path] = None,
    ref_coco: Optional[Path] = None, labels_path: Optional[Path] = None, mode: str = "soft",
    tau: Optional[float] = None, min_confidence: Optional[float] = None, resize_mask: bool = False,
    polygons: bool = False, ref_keypoints: Optional[Path] = None, matcher: str = "coordinates",
    matcher_ckpt: Optional[Path] = None, report_limit: int = 500, report_title: str = "coordgan propagate — review",
    score: Optional[Callable[[Path, list[str]], dict[str, str]]] = None, work_size: Optional[int] = None,
) -> dict[str, Any]:
    """``coordgan propagate`` as a function (the options above, same names); returns its JSON summary.

    Maps come from ``store``, else from ``ckpt`` / the shipped ``model`` / the shipped default model
    (``inference.resolve_model``). ``score(out, finished_names)``, if given, runs once every label
    PNG is written and before the report: the (label → text) pairs it returns join the report's
    summary line (the demo puts its measured mIoU there). Diagnostics go to stderr as in the
    command; the caller reports the result.
    """
    started = time.perf_counter()
    if mode not in ("soft", "hard"):
        raise UserError(f"--mode must be soft or hard, got {mode!r}")
    if tau is not None and not tau > 0:
        raise UserError(f"--tau must be positive, got {tau}")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    _check_matcher_options(matcher, matcher_ckpt, store, ckpt, mode, ref_keypoints, model)
    if work_size is not None and matcher == "coordinates":
        raise UserError("--work-size sets the feature matcher's resolution: use it with --matcher correlation or ensemble")
    uses_maps = matcher != "correlation"  # coordinates and ensemble vote on correspondence maps
    if uses_maps and store is None:
        ckpt = _resolve_map_model(ckpt, model, state)

    from coordgan_cli.correspondence.ensemble import coordinate_probabilities, fuse_probabilities
    from coordgan_cli.correspondence.keypoints import transfer_keypoints
    from coordgan_cli.correspondence.vote import prepare_references, propagate_map, reference_points, resolution_tau
    from coordgan_cli.io.coco import categories as coco_categories
    from coordgan_cli.io.coco import mask_annotations, read_reference_coco
    from coordgan_cli.io.images import ImageReadError, image_size, is_image_path, read_image, read_path_list, relative_name
    from coordgan_cli.io.masks import (IGNORE, check_mask_ids, default_labels, read_labels, read_mask,
                                       write_labels, write_mask)

    # ---- queries --------------------------------------------------------------------------
    q_root, q_paths = read_path_list(queries)
    names = [relative_name(p, q_root) for p in q_paths]
    seen: dict[str, str] = {}
    for p, n in zip(q_paths, names):
        stem = _output_stem(n)
        if stem in seen:
            raise UserError(f"queries {seen[stem]!r} and {n!r} would write the same output {stem}.png; rename one")
        seen[stem] = n

    # ---- references -----------------------------------------------------------------------
    pairs: list[tuple[Path, Optional[Path]]] = []
    if refs is not None:
        pairs.extend(_read_pairs(refs))
    if mask and len(mask) != len(ref):
        raise UserError(f"{len(ref)} --ref but {len(mask)} --mask: give one mask per reference (in the same order)")
    if not mask and ref and ref_coco is None:
        raise UserError("--ref needs a --mask per reference (or --ref-coco with their annotations)")
    pairs.extend(zip(ref, mask if mask else [None] * len(ref)))
    if not pairs:
        raise UserError("no references: give --ref IMAGE --mask MASK (repeatable), --refs pairs.txt or --ref-coco")
    for img, m in pairs:
        if not img.is_file():
            raise UserError(f"{img}: reference image not found")
        if m is None and ref_coco is None:
            raise UserError(f"{img}: reference has no mask (add it, or give --ref-coco)")

    labels = read_labels(labels_path) if labels_path is not None else None
    if labels is None and ref_coco is None:
        found = _find_labels_file([m for _, m in pairs if m is not None])
        if found is not None:
            labels = read_labels(found)
            info(f"labels: {found}", state)

    references: list[Reference] = []
    for img, m in pairs:
        size = image_size(img)
        ref_name_candidates = _name_candidates(relative_name(img, q_root)) if q_root is not None else []
        ref_name_candidates = list(dict.fromkeys(ref_name_candidates + [img.name]))
        if m is not None:
            ref_mask = read_mask(m)
            where = str(m)
        else:
            ref_mask, coco_labels, _ = read_reference_coco(ref_coco, ref_name_candidates, labels)
            labels = labels or coco_labels
            where = f"{ref_coco} ({img.name})"
        if ref_mask.shape != tuple(size):
            if not resize_mask:
                raise UserError(f"{where}: mask is {ref_mask.shape[1]}×{ref_mask.shape[0]} but its image {img} is "
                                f"{size[1]}×{size[0]}; give a mask of the image's size or pass --resize-mask")
            ref_mask = _resize_nearest(ref_mask, size)
        labelled = (ref_mask != IGNORE) & (ref_mask != 0)
        if not labelled.any():
            raise UserError(f"{where}: mask is empty (no labelled pixel besides background/ignore)")
        references.append(Reference(image=img, name=ref_name_candidates[0], mask=ref_mask, size=size))
        references[-1].candidates = ref_name_candidates  # type: ignore[attr-defined]
    if labels is None:
        top = max(int(r.mask[r.mask != IGNORE].max()) for r in references)
        labels = default_labels(top + 1)
        warn(f"no labels file (--labels, or labels.json beside the masks): using default names for ids 0..{top}")
    for r in references:
        check_mask_ids(r.mask, labels, f"mask of {r.image}")
    num_classes = max(labels.num_classes, max(int(r.mask[r.mask != IGNORE].max()) for r in references) + 1)
    if tau is None:
        side = max(max(r.size) for r in references)
        tau = resolution_tau(side)
        if uses_maps and mode == "soft":
            info(f"soft-vote temperature {tau:.4g} (0.01 at 128 px, scaled to {side} px)", state)

    # ---- keypoints of the references --------------------------------------------------------
    kp_category = None
    kp_refs: list[tuple[np.ndarray, np.ndarray]] = []
    if ref_keypoints is not None:
        kp_category, kp_refs = _read_ref_keypoints(ref_keypoints, references)

    # ---- feature matcher (correlation / ensemble) ---------------------------------------------
    correlation = None
    if matcher != "coordinates":
        correlation = _CorrelationMatcher(matcher_ckpt, references, num_classes, state.torch_device(), work_size)

    # ---- maps ---------------------------------------------------------------------------------
    write_back = store is not None
    source = MapSource(store, ckpt, state.torch_device() if store is None else "cpu", write_back) if uses_maps else None
    try:
        prepared = None
        if source is not None:
            for r in references:
                image = read_image(r.image) if source.model is not None else None
                r.correspondence, r.valid, _ = source.maps(image, r.candidates, r.size,  # type: ignore[attr-defined]
                                                           f"reference {r.image.name}")
            prepared = prepare_references([reference_points(r.correspondence, r.mask, r.valid) for r in references],
                                          num_classes, tau)
        settings = {
            "refs": [[r.name, hashlib.sha256(r.mask.tobytes()).hexdigest()] for r in references],
            "mode": mode, "tau": tau, "min_confidence": min_confidence, "polygons": polygons,
            "maps": (str(store.resolve()) if store else str(ckpt.resolve())) if uses_maps else None,
            "keypoints": str(ref_keypoints.resolve()) if ref_keypoints else None,
            # The matcher and its weights: resuming with another one would mix two methods in one folder.
            "matcher": matcher,
            "matcher_sha256": correlation.sha256 if correlation is not None else None,
        }
        if correlation is not None and correlation.work_size is not None:
            settings["work_size"] = correlation.work_size
        key = _settings_key(settings)
        out.mkdir(parents=True, exist_ok=True)
        progress_path = out / PROGRESS
        done = _load_progress(progress_path, key)
        write_labels(out / "labels.json", labels)
        palette = labels.colour_array()

        skipped: list[dict[str, str]] = []
        store_notes: set[str] = set()
        new_count = 0
        resumed = 0
        fresh = not progress_path.is_file()
        with open(progress_path, "ab") as progress_file:
            if fresh:
                _append(progress_file, {"settings": key})
            for index, (path, name) in enumerate(track(list(zip(q_paths, names)), len(q_paths), "propagate", state,
                                                       unit="img")):
                stem = _output_stem(name)
                label_png = out / "labels" / f"{stem}.png"
                if name in done and label_png.is_file():
                    resumed += 1
                    continue
                if not is_image_path(path):
                    skipped.append({"name": name, "reason": "not an image file"})
                    continue
                try:
                    image = read_image(path)
                except ImageReadError as exc:
                    skipped.append({"name": name, "reason": exc.message})
                    continue
                size = image.shape[:2]
                cmap = valid = row = None
                if source is not None:
                    cmap, valid, row = source.maps(image, _name_candidates(name), size, f"query {name}")
                if matcher == "coordinates":
                    lab, conf, _ = propagate_map(cmap, prepared, num_classes, query_valid=valid, tau=tau, mode=mode)
                elif matcher == "correlation":
                    lab, conf, _ = fuse_probabilities(correlation.probabilities(image))
                else:
                    coordinate, _ = coordinate_probabilities(cmap, prepared, num_classes, query_valid=valid,
                                                             tau=tau, mode=mode)
                    lab, conf, _ = fuse_probabilities(coordinate, correlation.probabilities(image))
                if min_confidence is not None:
                    lab = np.where(conf < min_confidence, IGNORE, lab).astype(np.uint8)
                write_mask(label_png, lab, labels)
                _write_pictures(out, stem, image, lab, conf, palette)
                if row is not None:
                    if tuple(source.reader.size) == tuple(size):
                        source.reader.put("labels", row, lab)
                        source.reader.put("confidence", row, conf.astype(np.float16))
                    else:
                        store_notes.add(f"store maps are {source.reader.size[1]}×{source.reader.size[0]}, labels "
                                        f"{size[1]}×{size[0]}: labels/confidence not written into the store")
                image_entry = {"id": index + 1, "file_name": name, "height": int(size[0]), "width": int(size[1])}
                record: dict[str, Any] = {
                    "name": name,
                    "mean_confidence": float(conf.mean()),
                    "low_fraction": float((conf < (min_confidence if min_confidence is not None else 0.5)).mean()),
                    "image": image_entry,
                    "annotations": mask_annotations(lab, index + 1, 1, polygons=polygons, confidence=conf),
                }
                if kp_category is not None:
                    kp = transfer_keypoints(cmap, [(r.correspondence, xy, vis) for r, (xy, vis) in
                                                   zip(references, kp_refs)], tau=tau, query_valid=valid)
                    record["keypoints"] = [_keypoint_annotation(kp, index + 1, kp_category["id"])]
                done[name] = _light(record, _append(progress_file, record))
                new_count += 1
    finally:
        if source is not None:
            source.close()
    for note in sorted(store_notes):
        info(f"note: {note}", state)

    # ---- assemble (streamed from the records, in query order) ---------------------------------
    finished = [n for n in names if n in done and (out / "labels" / f"{_output_stem(n)}.png").is_file()]
    offsets = [done[n]["offset"] for n in finished]
    _write_coco_stream(out / "annotations.json", progress_path, offsets, coco_categories(labels), "annotations",
                       "coordgan propagate")
    outputs = {"labels": str(out / "labels"), "labels_json": str(out / "labels.json"),
               "annotations": str(out / "annotations.json"), "overlays": str(out / "overlays"),
               "confidence": str(out / "confidence"), "report": str(out / "report.html")}
    if kp_category is not None:
        _write_coco_stream(out / "keypoints.json", progress_path, offsets, [kp_category], "keypoints",
                           "coordgan propagate keypoints")
        outputs["keypoints"] = str(out / "keypoints.json")
    mean_conf = float(np.mean([done[n]["mean_confidence"] for n in finished])) if finished else None

    from coordgan_cli.io.report import write_report

    path_of = dict(zip(names, q_paths))
    report_records = [{
        "name": n, "mean_confidence": done[n]["mean_confidence"], "low_fraction": done[n]["low_fraction"],
        "image": path_of[n],
        "overlay": out / "overlays" / f"{_output_stem(n)}.jpg",
        "confidence": out / "confidence" / f"{_output_stem(n)}.png",
    } for n in finished]
    scored = score(out, finished) if score is not None else {}
    seconds = time.perf_counter() - started
    write_report(out / "report.html", report_records, title=report_title,
                 summary={"queries": len(finished), "references": ", ".join(r.name for r in references),
                          "matcher": matcher, "mode": mode, "tau": tau,
                          "mean confidence": f"{mean_conf:.3f}" if mean_conf is not None else "n/a", **scored},
                 legend=[(labels.names[i], labels.colours[i]) for i in labels.ids], limit=report_limit)
    summary = {
        "count": len(finished), "new": new_count, "resumed": resumed, "skipped": skipped, "matcher": matcher,
        "mode": mode, "tau": tau, "seconds": round(seconds, 3), "mean_confidence": mean_conf, "outputs": outputs,
    }
    for s in skipped:
        warn(f"skipped {s['name']}: {s['reason']}")
    return summary


def _resolve_map_model(ckpt: Optional[Path], model: Optional[str], state: AppState) -> Path:
    """The encoder checkpoint giving the maps: --ckpt, --model or the shipped default (named on stderr)."""
    from coordgan_cli.inference import is_default_model, resolve_model

    if ckpt is None and model is None:
        try:
            path = resolve_model(None, None)
        except UserError as exc:
            raise UserError("no correspondence maps: pass --store maps.h5 (e.g. from `coordgan invert` or "
                            "`coordgan synth`), --ckpt with an encoder checkpoint or --model NAME; this build "
                            "ships no CoordGAN model") from exc
        if is_default_model(path):
            info(f"maps from the shipped model {path.stem!r} ({path}); --ckpt or --model chooses another", state)
        return path
    return resolve_model(ckpt, model)


def _check_matcher_options(matcher: str, matcher_ckpt: Optional[Path], store: Optional[Path], ckpt: Optional[Path],
                           mode: str, ref_keypoints: Optional[Path], model: Optional[str] = None) -> None:
    """Refuse option combinations that would silently do something other than asked."""
    if model is not None and ckpt is not None:
        raise UserError("--model and --ckpt both name the model giving the maps: pass one of them")
    if model is not None and store is not None:
        raise UserError("--model and --store: the maps come from the store, so the model would be unused; drop one")
    if matcher not in MATCHERS:
        raise UserError(f"--matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}")
    if matcher == "coordinates" and matcher_ckpt is not None:
        raise UserError("--matcher-ckpt is used by --matcher correlation or ensemble, not coordinates")
    if matcher == "correlation":
        if store is not None or ckpt is not None or model is not None:
            raise UserError("--matcher correlation uses no correspondence maps: drop --store/--ckpt/--model, or use "
                            "--matcher ensemble to combine the maps' vote with the correlation")
        if mode != "soft":
            raise UserError("--mode applies to the coordinate vote; --matcher correlation is always the soft "
                            "CoCosNet correlation (use --matcher ensemble to combine it with a hard vote)")
        if ref_keypoints is not None:
            raise UserError("--ref-keypoints transfers keypoints through correspondence maps: use --matcher "
                            "coordinates or ensemble (with --store or --ckpt)")


class _CorrelationMatcher:
    """A trained feature matcher with the references' features prepared once for all queries."""

    def __init__(self, matcher_ckpt: Optional[Path], references: list[Reference], num_classes: int, device,
                 work_size: Optional[int] = None) -> None:
        from coordgan_cli.correspondence.correlation import prepare_correlation_references
        from coordgan_cli.inference import resolve_matcher
        from coordgan_cli.io.checkpoint import file_sha256
        from coordgan_cli.io.images import read_image
        from coordgan_cli.training.matcher import load_matcher, matcher_work_size

        path = resolve_matcher(matcher_ckpt)
        self.network, self.config = load_matcher(path, device)
        self.sha256 = file_sha256(path)
        self.device = device
        self.work_size = matcher_work_size(path, self.config, work_size)
        self.references = prepare_correlation_references(
            [(read_image(r.image), r.mask) for r in references], self.network, num_classes, device=device,
            patch=self.config.patch, work_size=self.work_size)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) query → (C, H, W) float32 warped one-hot reference labels."""
        from coordgan_cli.correspondence.correlation import correlation_probabilities

        probabilities = correlation_probabilities(image, self.references, self.network, tau=self.config.tau,
                                                  k=self.config.k, device=self.device, patch=self.config.patch,
                                                  work_size=self.work_size)
        return probabilities.float().cpu().numpy()


def _write_pictures(out: Path, stem: str, image: np.ndarray, lab: np.ndarray, conf: np.ndarray,
                    palette: np.ndarray) -> None:
    from coordgan_cli.io.images import write_image
    from coordgan_cli.io.report import confidence_heatmap, overlay

    colours = palette[lab]
    write_image(out / "overlays" / f"{stem}.jpg", overlay(image, colours, (lab != 0) & (lab != 255)))
    write_image(out / "confidence" / f"{stem}.png", confidence_heatmap(conf))


def _read_ref_keypoints(path: Path, references: list[Reference]):
    """(category dict, [(xy (K, 2), visible (K,))] per reference) from a COCO keypoints file."""
    from coordgan_cli.io.coco import _match_image

    data = read_json(path, "keypoints file")
    cats = [c for c in data.get("categories", []) if c.get("keypoints")]
    if not cats or "images" not in data or "annotations" not in data:
        raise UserError(f"{path}: not a COCO keypoints file (needs images, annotations and a category with keypoints)")
    category = {k: cats[0][k] for k in ("id", "name", "keypoints", "skeleton") if k in cats[0]}
    k = len(category["keypoints"])
    out = []
    matched = 0
    for r in references:
        image = _match_image(data["images"], r.candidates)  # type: ignore[attr-defined]
        xy = np.zeros((k, 2))
        vis = np.zeros(k, bool)
        if image is not None:
            anns = [a for a in data["annotations"] if a.get("image_id") == image["id"] and a.get("keypoints")]
            if anns:
                kp = np.asarray(anns[0]["keypoints"], dtype=np.float64).reshape(-1, 3)
                if kp.shape[0] != k:
                    raise UserError(f"{path}: image {image.get('file_name')!r} has {kp.shape[0]} keypoints, "
                                    f"category has {k}")
                # Pixel-index coordinates (integer = pixel centre), as `coordgan synth` writes them.
                xy = kp[:, :2]
                vis = kp[:, 2] > 0
                matched += 1
        out.append((xy, vis))
    if not matched:
        raise UserError(f"{path}: none of the references ({', '.join(r.name for r in references)}) has keypoints there")
    return category, out


def _keypoint_annotation(kp, image_id: int, category_id: int) -> dict[str, Any]:
    flat = []
    for (x, y), c in zip(kp.xy.tolist(), kp.confidence.tolist()):
        if np.isnan(x):
            flat.extend([0.0, 0.0, 0])
        else:
            flat.extend([round(x, 2), round(y, 2), 2])
    return {
        "image_id": image_id, "category_id": category_id, "keypoints": flat,
        "num_keypoints": int(sum(1 for v in flat[2::3] if v)),
        "keypoint_scores": [round(float(c), 4) for c in kp.confidence.tolist()],
        "score": float(np.mean(kp.confidence)) if len(kp.confidence) else 0.0,
        "iscrowd": 0,
    }


def register(app: typer.Typer) -> None:
    app.command("propagate")(propagate)
