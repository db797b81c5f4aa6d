"""Label a folder: stream the queries through a fitted matcher into files, resumably.

Per query: read → ``matcher.label`` (or ``predict_proba``'s argmax) → ``--min-confidence`` → label PNG
(palette), overlay, confidence picture, the labels and confidence in ``OUT/labels.h5`` when the
matcher read the query's maps from a store (the store itself is never written), one
``progress.jsonl`` record (COCO image entry, annotations, keypoints). At the end the COCO files
and report.html are assembled from the records, in query order, with flat memory. Before the
first query, ``OUT/run.json`` records what the run is (``run_record``: the queries' source, the
references' image and mask files, the matcher and its settings), so `coordgan suggest --from-run
OUT` needs nothing else.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from coordgan_cli.errors import UserError
from coordgan_cli.labelling.matchers import Matcher, MatcherBase, Prediction, make_matcher
from coordgan_cli.labelling.progress import (PROGRESS, append_record, light, load_progress, settings_key,
                                             write_coco_stream)
from coordgan_cli.labelling.references import References

LABELS_H5 = "labels.h5"
RUN_JSON = "run.json"
RUN_FORMAT = "coordgan-propagate-run"
Queries = Union[str, Path, Iterable[Union[str, Path]], "QueryList"]


def output_stem(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix(""))


def _quiet(message: str) -> None:
    pass


def _no_progress(items: Iterable[Any], total: int) -> Iterable[Any]:
    return items


@dataclass
class QueryList:
    """The query images: paths, their root (names are relative to it) and their names."""

    root: Optional[Path]
    paths: list[Path]
    names: list[str] = field(default_factory=list)
    source: Optional[Path] = None  # the folder or path-list file they were read from (None: stdin, a list)

    @classmethod
    def read(cls, source: Queries) -> "QueryList":
        """A folder, a text file of paths, '-' (stdin), a list/iterable of paths or a QueryList."""
        from coordgan_cli.io.images import read_path_list, relative_name

        if isinstance(source, QueryList):
            return source
        origin = None
        if isinstance(source, (str, Path)):
            root, paths = read_path_list(source)
            origin = None if str(source) == "-" else Path(source)
        else:
            paths = [Path(p) for p in source]
            root = None
        queries = cls(root, paths, [relative_name(p, root) for p in paths], origin)
        queries.check_unique()
        return queries

    def check_unique(self) -> None:
        seen: dict[str, str] = {}
        for n in self.names:
            stem = output_stem(n)
            if stem in seen:
                raise UserError(f"queries {seen[stem]!r} and {n!r} would write the same output {stem}.png; rename one")
            seen[stem] = n


def predict_full(matcher: Matcher, image: np.ndarray, name: Optional[str]) -> Prediction:
    """A matcher's ``label`` when it has one, else the argmax of its ``predict_proba``."""
    if hasattr(matcher, "label"):
        return matcher.label(image, name=name)  # type: ignore[attr-defined]
    return MatcherBase.label(matcher, image, name=name)  # type: ignore[arg-type]


class Propagator:
    """Label queries with a fitted-on-run matcher into ``out`` (see the module docstring).

    min_confidence: pixels below it become 255 (ignore); polygons: COCO polygons instead of RLE;
    keypoints: a COCO keypoints file of the references, transferred through the matcher's
    correspondence maps (``reference_maps``) into OUT/keypoints.json; settings: defaults for what
    the resume key and summary record (``mode``, ``tau``), below the matcher's own ``settings()``;
    score(out, finished names) → {label: text} for the report's summary line; info / warn / track:
    diagnostics and a progress wrapper ``track(items, total)`` over the queries; track_references:
    one over the matcher's per-reference work in ``fit`` (set as its ``track_references``). ``run`` fits the matcher on the
    references and closes it (``close()``, e.g. a store) when the queries are done.
    """

    def __init__(self, references: References, matcher: Matcher, out: Union[str, Path], *,
                 min_confidence: Optional[float] = None, polygons: bool = False, keypoints: Optional[Path] = None,
                 report_limit: int = 500, report_title: str = "coordgan propagate — review",
                 settings: Optional[dict[str, Any]] = None,
                 score: Optional[Callable[[Path, list[str]], dict[str, str]]] = None,
                 info: Callable[[str], None] = _quiet, warn: Callable[[str], None] = _quiet,
                 track: Callable[[Iterable[Any], int], Iterable[Any]] = _no_progress,
                 track_references: Optional[Callable[[Iterable[Any], int], Iterable[Any]]] = None) -> None:
        from coordgan_cli.correspondence.vote import resolution_tau

        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise UserError(f"--min-confidence must be in [0, 1], got {min_confidence}")
        self.references, self.matcher, self.out = references, matcher, Path(out)
        self.min_confidence, self.polygons, self.keypoints = min_confidence, polygons, keypoints
        self.report_limit, self.report_title, self.score = report_limit, report_title, score
        self.info, self.warn, self.track, self.track_references = info, warn, track, track_references
        if report_limit < 0:
            raise UserError(f"--report-limit must be 0 (no picture rows) or more, got {report_limit}")
        self.defaults = {"mode": "soft", "tau": resolution_tau(references.side), "maps": None,
                         "matcher_sha256": None, **(settings or {})}

    # ---- the run ------------------------------------------------------------------------------

    def run(self, queries: Queries) -> dict[str, Any]:
        """Label every query; returns the summary (``coordgan propagate --json``)."""
        started = time.perf_counter()
        queries = QueryList.read(queries)
        self.kp_category, self.kp_refs = None, []
        self.labels_store = None
        if self.keypoints is not None:
            self._read_keypoints()
        try:
            if self.track_references is not None and hasattr(self.matcher, "track_references"):
                self.matcher.track_references = self.track_references  # type: ignore[union-attr]
            self.matcher.fit(self.references)
            self.settings = {**self.defaults, **getattr(self.matcher, "settings", lambda: {"matcher": self.matcher.name})()}
            key = settings_key({
                "refs": self.references.fingerprint(), "min_confidence": self.min_confidence, "polygons": self.polygons,
                "keypoints": str(Path(self.keypoints).resolve()) if self.keypoints else None, **self.settings})
            self.out.mkdir(parents=True, exist_ok=True)
            done = load_progress(self.out / PROGRESS, key)
            from coordgan_cli.io.masks import write_labels

            write_labels(self.out / "labels.json", self.references.labels)
            from coordgan_cli.io.atomic import atomic_write_json

            atomic_write_json(self.out / RUN_JSON, run_record(queries, self.references, self.matcher.name,
                                                              {"min_confidence": self.min_confidence,
                                                               "polygons": self.polygons, **self.settings}))
            counts = self._label_all(queries, done, key)
        finally:
            getattr(self.matcher, "close", lambda: None)()
            if self.labels_store is not None:
                self.labels_store.close()
        for note in sorted(counts.pop("notes")):
            self.info(f"note: {note}")
        return self._assemble(queries, done, counts, started)

    def _read_keypoints(self) -> None:
        from coordgan_cli.labelling.keypoints import read_reference_keypoints

        if not hasattr(self.matcher, "reference_maps"):
            raise UserError(f"--ref-keypoints transfers keypoints through correspondence maps: matcher "
                            f"{self.matcher.name!r} has none (use coordinates or ensemble)")
        self.kp_category, self.kp_refs = read_reference_keypoints(Path(self.keypoints), self.references)

    def _label_all(self, queries: QueryList, done: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
        counts: dict[str, Any] = {"new": 0, "resumed": 0, "skipped": [], "notes": set()}
        progress_path = self.out / PROGRESS
        fresh = not progress_path.is_file()
        with open(progress_path, "ab") as handle:
            if fresh:
                append_record(handle, {"settings": key})
            items = list(zip(queries.paths, queries.names))
            for index, (path, name) in enumerate(self.track(items, len(items))):
                if name in done and (self.out / "labels" / f"{output_stem(name)}.png").is_file():
                    counts["resumed"] += 1
                    continue
                record = self._label_one(index, path, name, counts["skipped"], counts["notes"])
                if record is not None:
                    done[name] = light(record, append_record(handle, record))
                    counts["new"] += 1
        return counts

    def _label_one(self, index: int, path: Path, name: str, skipped: list[dict[str, str]],
                   notes: set[str]) -> Optional[dict[str, Any]]:
        """Label one query and write its files; its progress record, or None when skipped."""
        from coordgan_cli.io.coco import mask_annotations
        from coordgan_cli.io.images import ImageReadError, is_image_path, read_image
        from coordgan_cli.io.masks import IGNORE

        if not is_image_path(path):
            skipped.append({"name": name, "reason": "not an image file"})
            return None
        try:
            image = read_image(path)
        except ImageReadError as exc:
            skipped.append({"name": name, "reason": exc.message})
            return None
        prediction = predict_full(self.matcher, image, name)
        lab, conf = prediction.labels, prediction.confidence
        if self.min_confidence is not None:
            lab = np.where(conf < self.min_confidence, IGNORE, lab).astype(np.uint8)
        self._write_pictures(output_stem(name), image, lab, conf)
        note = self._store_labels(prediction, lab, conf)
        if note:
            notes.add(note)
        size = image.shape[:2]
        low = self.min_confidence if self.min_confidence is not None else 0.5
        record: dict[str, Any] = {
            "name": name, "mean_confidence": float(conf.mean()), "low_fraction": float((conf < low).mean()),
            "image": {"id": index + 1, "file_name": name, "height": int(size[0]), "width": int(size[1])},
            "annotations": mask_annotations(lab, index + 1, 1, polygons=self.polygons, confidence=conf),
        }
        if self.kp_category is not None:
            record["keypoints"] = [self._keypoints(prediction, index + 1)]
        return record

    def _store_labels(self, prediction: Prediction, lab: np.ndarray, conf: np.ndarray) -> Optional[str]:
        """Labels and confidence of a query whose maps came from a store into OUT/labels.h5 (rows
        named as in the store); a note when the labels are not at the store's size."""
        entry = getattr(self.matcher, "store_entry", lambda p: None)(prediction)
        if entry is None:
            return None
        name, size, store = entry
        if tuple(lab.shape) != tuple(size):
            return (f"store maps are {size[1]}×{size[0]}, labels {lab.shape[1]}×{lab.shape[0]}: "
                    f"those labels/confidence are not in {LABELS_H5}")
        if self.labels_store is None:
            from coordgan_cli.io.store import LabelsWriter

            self.labels_store = LabelsWriter(self.out / LABELS_H5, size=size, store=Path(store).resolve())
        self.labels_store.put(name, lab, conf)
        return None

    def _write_pictures(self, stem: str, image: np.ndarray, lab: np.ndarray, conf: np.ndarray) -> None:
        from coordgan_cli.io.images import write_image
        from coordgan_cli.io.masks import write_mask
        from coordgan_cli.io.report import confidence_heatmap, overlay

        write_mask(self.out / "labels" / f"{stem}.png", lab, self.references.labels)
        colours = self.references.labels.colour_array()[lab]
        write_image(self.out / "overlays" / f"{stem}.jpg", overlay(image, colours, (lab != 0) & (lab != 255)))
        write_image(self.out / "confidence" / f"{stem}.png", confidence_heatmap(conf))

    def _keypoints(self, prediction: Prediction, image_id: int) -> dict[str, Any]:
        from coordgan_cli.correspondence.keypoints import transfer_keypoints
        from coordgan_cli.labelling.keypoints import keypoint_annotation

        refs = [(m, xy, vis) for m, (xy, vis) in zip(self.matcher.reference_maps, self.kp_refs)]  # type: ignore
        kp = transfer_keypoints(prediction.correspondence, refs, tau=self.settings["tau"],
                                query_valid=prediction.valid)
        return keypoint_annotation(kp, image_id, self.kp_category["id"])

    # ---- outputs assembled from the records ---------------------------------------------------

    def _assemble(self, queries: QueryList, done: dict[str, dict[str, Any]], counts: dict[str, Any],
                  started: float) -> dict[str, Any]:
        from coordgan_cli.io.coco import categories as coco_categories

        out = self.out
        finished = [n for n in queries.names if n in done and (out / "labels" / f"{output_stem(n)}.png").is_file()]
        offsets = [done[n]["offset"] for n in finished]
        write_coco_stream(out / "annotations.json", out / PROGRESS, offsets, coco_categories(self.references.labels),
                          "annotations", "coordgan propagate")
        outputs = {"labels": str(out / "labels"), "labels_json": str(out / "labels.json"),
                   "annotations": str(out / "annotations.json"), "overlays": str(out / "overlays"),
                   "confidence": str(out / "confidence"), "report": str(out / "report.html")}
        if self.kp_category is not None:
            write_coco_stream(out / "keypoints.json", out / PROGRESS, offsets, [self.kp_category], "keypoints",
                              "coordgan propagate keypoints")
            outputs["keypoints"] = str(out / "keypoints.json")
        if (out / LABELS_H5).is_file():
            outputs["labels_h5"] = str(out / LABELS_H5)
        mean_conf = float(np.mean([done[n]["mean_confidence"] for n in finished])) if finished else None
        self._report(queries, done, finished, mean_conf)
        summary = {
            "count": len(finished), "new": counts["new"], "resumed": counts["resumed"], "skipped": counts["skipped"],
            "matcher": self.matcher.name, "mode": self.settings["mode"], "tau": self.settings["tau"],
            "seconds": round(time.perf_counter() - started, 3), "mean_confidence": mean_conf, "outputs": outputs,
        }
        for s in counts["skipped"]:
            self.warn(f"skipped {s['name']}: {s['reason']}")
        return summary

    def _report(self, queries: QueryList, done: dict[str, dict[str, Any]], finished: list[str],
                mean_conf: Optional[float]) -> None:
        from coordgan_cli.io.report import write_report

        out, labels = self.out, self.references.labels
        path_of = dict(zip(queries.names, queries.paths))
        records = [{
            "name": n, "mean_confidence": done[n]["mean_confidence"], "low_fraction": done[n]["low_fraction"],
            "image": path_of[n], "overlay": out / "overlays" / f"{output_stem(n)}.jpg",
            "confidence": out / "confidence" / f"{output_stem(n)}.png",
        } for n in finished]
        scored = self.score(out, finished) if self.score is not None else {}
        write_report(out / "report.html", records, title=self.report_title,
                     summary={"queries": len(finished), "references": ", ".join(self.references.names),
                              "matcher": self.matcher.name, "mode": self.settings["mode"], "tau": self.settings["tau"],
                              "mean confidence": f"{mean_conf:.3f}" if mean_conf is not None else "n/a", **scored},
                     legend=[(labels.names[i], labels.colours[i]) for i in labels.ids], limit=self.report_limit)


def run_record(queries: QueryList, references: References, matcher: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What ``OUT/run.json`` holds: absolute paths, so it can be read from anywhere.

    queries: ``source`` (the folder or path-list file, re-read as `propagate` read it) or, for
    stdin or a Python list, ``paths``; references: image and mask file per reference (null for
    in-memory arrays, or a mask from --ref-coco); settings: as the resume key records them.
    """
    def absolute(path: Optional[Path]) -> Optional[str]:
        return None if path is None else str(Path(path).absolute())

    query_part: dict[str, Any] = {"count": len(queries.paths), "root": absolute(queries.root)}
    if queries.source is not None:
        query_part["source"] = absolute(queries.source)
    else:
        query_part["paths"] = [absolute(p) for p in queries.paths]
    masks = references.mask_paths or [None] * len(references)
    return {
        "format": RUN_FORMAT, "version": 1, "matcher": matcher, "queries": query_part,
        "references": [{"name": n, "image": absolute(p), "mask": absolute(m)}
                       for n, p, m in zip(references.names, references.paths, masks)],
        "labels": absolute(references.labels_file),
        "settings": json.loads(json.dumps(settings, default=str)),  # a Path or device as text
    }


def label_folder(references: References, queries: Queries, out: Union[str, Path],
                 matcher: Union[str, Matcher] = "correlation", *, min_confidence: Optional[float] = None,
                 polygons: bool = False, keypoints: Optional[Path] = None, report_limit: int = 500,
                 report_title: str = "coordgan propagate — review", settings: Optional[dict[str, Any]] = None,
                 score: Optional[Callable[[Path, list[str]], dict[str, str]]] = None,
                 info: Callable[[str], None] = _quiet, warn: Callable[[str], None] = _quiet,
                 track: Callable[[Iterable[Any], int], Iterable[Any]] = _no_progress,
                 track_references: Optional[Callable[[Iterable[Any], int], Iterable[Any]]] = None,
                 **matcher_options: Any) -> dict[str, Any]:
    """Label ``queries`` (a folder, a text file of paths, '-', or a list of paths) from
    ``references`` into ``out`` — labels/ (palette PNGs), labels.json, annotations.json (COCO),
    overlays/, confidence/, report.html, run.json, progress.jsonl (a rerun resumes) — and return the
    summary. ``matcher``: a registry name (built with ``**matcher_options``) or a Matcher.
    """
    if isinstance(matcher, str):
        matcher = make_matcher(matcher, **matcher_options)
    elif matcher_options:
        raise TypeError(f"matcher options {sorted(matcher_options)} given with a matcher object")
    propagator = Propagator(references, matcher, out, min_confidence=min_confidence, polygons=polygons,
                            keypoints=keypoints, report_limit=report_limit, report_title=report_title,
                            settings=settings, score=score, info=info, warn=warn, track=track,
                            track_references=track_references)
    return propagator.run(queries)


__all__ = ["Propagator", "QueryList", "RUN_JSON", "label_folder", "output_stem", "predict_full", "run_record"]
