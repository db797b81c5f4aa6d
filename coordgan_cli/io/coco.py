"""COCO JSON: label maps out (RLE or polygons) and reference masks in (from CVAT, Label Studio…).

Out: one annotation per (image, class present): RLE from pycocotools with ``counts`` as str,
``iscrowd`` 0, ``area`` and ``bbox`` computed by pycocotools; categories are the labels file's
classes (background, id 0, is not a category; category id = label id, so ids start at 1).
In: the annotations of one image, rasterised (polygons and RLE both) into an id map.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np
from pycocotools import mask as mask_utils

from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_write_json
from coordgan_cli.io.jsonfile import read_json
from coordgan_cli.io.masks import IGNORE, LabelSet, _auto_colour


def categories(labels: LabelSet) -> list[dict[str, Any]]:
    """COCO categories: every label but background (id 0); category id = label id."""
    return [{"id": i, "name": labels.names[i], "supercategory": "object"} for i in labels.ids if i != 0]


def _polygons(binary: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons that rasterise back to (nearly) the same
    pixels.

    Contours are traced on a 2× nearest-upsampled mask, so each vertex lies a quarter pixel inside
    the region's outer edge; pycocotools then covers exactly the pixels whose centres are inside.
    Holes are not kept (COCO polygons cannot subtract), so a part that encloses another one covers
    it too — paint smaller parts last, or use RLE (exact).
    """
    import cv2

    h, w = binary.shape
    big = np.pad(cv2.resize(binary.astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST), 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = (c.reshape(-1, 2).astype(np.float64) - 1.0 + 0.5) / 2.0
        if len(pts) < 3:
            # A one-pixel-wide run collapses to a line or a point: give it the pixel's own square.
            x0, y0 = pts.min(axis=0) - 0.25
            x1, y1 = pts.max(axis=0) + 0.25
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        polys.append(pts.ravel().round(3).tolist())
    return polys


def mask_annotations(mask: np.ndarray, image_id: int, first_id: int, *, polygons: bool = False,
                     confidence: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Annotations for one (H, W) uint8 id map: one per class id present (0 and 255 skipped).

    With ``confidence`` (H, W), each annotation also gets ``score`` = its mean confidence.
    """
    out = []
    h, w = mask.shape
    for cls in np.unique(mask).tolist():
        if cls in (0, IGNORE):
            continue
        binary = mask == cls
        rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
        ann: dict[str, Any] = {
            "id": first_id + len(out),
            "image_id": image_id,
            "category_id": int(cls),
            "iscrowd": 0,
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        }
        if polygons:
            polys = _polygons(binary)
            if not polys:
                continue
            ann["segmentation"] = polys
            merged = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            ann["area"] = float(mask_utils.area(merged))
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(merged)]
        else:
            ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        if confidence is not None:
            ann["score"] = float(confidence[binary].mean())
        out.append(ann)
    return out


def coco_document(images: Iterable[dict[str, Any]], annotations: Iterable[dict[str, Any]], labels: LabelSet,
                  description: str = "coordgan propagate") -> dict[str, Any]:
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": list(images),
        "annotations": list(annotations),
        "categories": categories(labels),
    }


def write_coco(path: str | Path, images: Iterable[dict[str, Any]], annotations: Iterable[dict[str, Any]],
               labels: LabelSet) -> None:
    """Write a COCO JSON file atomically."""
    atomic_write_json(path, coco_document(images, annotations, labels), indent=None)


def decode_annotation(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """(H, W) bool of one annotation's segmentation (polygons, RLE with str/bytes or list counts)."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and "counts" in seg:
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii") if isinstance(seg["counts"], str)
                   else seg["counts"]}
    else:
        raise ValueError("segmentation must be polygons or RLE")
    return mask_utils.decode(rle).astype(bool)


def _match_image(images: list[dict[str, Any]], candidates: list[str]) -> dict[str, Any] | None:
    by_name = {str(PurePosixPath(str(img.get("file_name", "")).replace("\\", "/"))): img for img in images}
    for cand in candidates:
        if cand in by_name:
            return by_name[cand]
    # Tools prefix their own folders (CVAT task dirs, Label Studio upload hashes): match the tail.
    for cand in candidates:
        hits = [img for name, img in by_name.items() if name.endswith("/" + cand) or PurePosixPath(name).name == cand]
        if len(hits) == 1:
            return hits[0]
    return None


def read_reference_coco(path: str | Path, names: list[str], labels: LabelSet | None = None
                        ) -> tuple[np.ndarray, LabelSet, tuple[int, int]]:
    """Rasterise one image's annotations from a COCO file into an id map.

    names: ways to name the image, most specific first (its path relative to the queries root,
    then its file name). labels: if given, categories are mapped to its ids by name; otherwise
    category ids become label ids (renumbered 1.. if any is above 254) and a LabelSet is built
    from the category names. Larger annotations are painted first so smaller parts stay visible.
    Returns (mask (H, W) uint8, labels, (H, W) from the COCO image entry).
    """
    path = Path(path)
    data = read_json(path, "COCO file")
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise UserError(f"{path}: not a COCO file (needs 'images', 'annotations' and 'categories')")
    image = _match_image(data["images"], names)
    if image is None:
        raise UserError(f"{path}: no image entry matches {names[0]!r} (file_name compared by relative path and name)")
    height, width = int(image["height"]), int(image["width"])
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    if labels is not None:
        by_name = {name: i for i, name in labels.names.items()}
        missing = [c["name"] for c in cats if c["name"] not in by_name]
        cat_to_label = {int(c["id"]): by_name[c["name"]] for c in cats if c["name"] in by_name}
        out_labels = labels
    else:
        missing = []
        ids = [int(c["id"]) for c in cats]
        renumber = any(not 1 <= i < IGNORE for i in ids)
        cat_to_label = {cid: (n + 1 if renumber else cid) for n, cid in enumerate(ids)}
        names_map = {0: "background", **{cat_to_label[int(c["id"])]: str(c["name"]) for c in cats}}
        out_labels = LabelSet(names=names_map, colours={i: _auto_colour(i) for i in names_map})
    mask = np.zeros((height, width), np.uint8)
    anns = [a for a in data["annotations"] if a.get("image_id") == image["id"]]
    anns.sort(key=lambda a: -float(a.get("area", 0.0) or 0.0))
    for ann in anns:
        cid = int(ann["category_id"])
        if cid not in cat_to_label:
            if labels is not None:
                raise UserError(f"{path}: category {cid} of image {image.get('file_name')!r} is not in the labels "
                                f"file (categories missing there: {missing})")
            raise UserError(f"{path}: annotation {ann.get('id')} uses category {cid}, which is not in 'categories'")
        try:
            binary = decode_annotation(ann, height, width)
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{path}: annotation {ann.get('id')} has an unreadable segmentation ({exc})") from exc
        mask[binary] = cat_to_label[cid]
    if not mask.any():
        raise UserError(f"{path}: image {image.get('file_name')!r} has no annotations (empty reference mask)")
    return mask, out_labels, (height, width)
