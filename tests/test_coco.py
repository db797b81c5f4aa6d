"""COCO out (pycocotools loads it, masks decode to exactly the label map) and reference masks in."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from coordgan_cli.errors import UserError
from coordgan_cli.io.coco import coco_document, mask_annotations, read_reference_coco, write_coco
from coordgan_cli.io.masks import LabelSet, labels_from_names


def _mask() -> np.ndarray:
    rng = np.random.default_rng(0)
    m = np.zeros((30, 40), np.uint8)
    m[5:20, 5:25] = 1
    m[8:12, 8:30] = 2
    m[22:28, 30:38] = 3
    m[rng.random(m.shape) < 0.02] = 255  # ignore pixels are no annotation
    m[15, 15] = 2  # a single-pixel island
    return m


def _decode(coco: COCO, image_id: int, shape) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        out[coco.annToMask(ann) > 0] = ann["category_id"]
    return out


def test_rle_round_trip(tmp_path) -> None:
    labels = labels_from_names(["background", "skin", "eye", "hat"])
    m = _mask()
    anns = mask_annotations(m, 7, 1)
    assert all(isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0 for a in anns)
    assert sorted(a["category_id"] for a in anns) == [1, 2, 3]
    for a in anns:
        rle = mask_utils.encode(np.asfortranarray((m == a["category_id"]).astype(np.uint8)))
        assert a["area"] == float(mask_utils.area(rle))
        assert a["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
    path = tmp_path / "ann.json"
    write_coco(path, [{"id": 7, "file_name": "a/b.png", "height": 30, "width": 40}], anns, labels)
    coco = COCO(str(path))
    assert [c["id"] for c in coco.dataset["categories"]] == [1, 2, 3]  # background is not a category
    expected = np.where(m == 255, 0, m)
    np.testing.assert_array_equal(_decode(coco, 7, m.shape), expected)


def test_polygons_load_and_approximate(tmp_path) -> None:
    labels = labels_from_names(["background", "a", "b", "c"])
    m = _mask()
    m[m == 255] = 0
    anns = mask_annotations(m, 1, 1, polygons=True)
    assert all(isinstance(a["segmentation"], list) for a in anns)
    path = tmp_path / "poly.json"
    write_coco(path, [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}], anns, labels)
    decoded = _decode(COCO(str(path)), 1, m.shape)
    assert (decoded == m).mean() > 0.95


def test_read_reference_coco(tmp_path) -> None:
    m = _mask()
    m[m == 255] = 0
    # As a tool exports it: other category ids, a folder prefix on file_name, a polygon annotation.
    anns = mask_annotations(m, 3, 1)
    for a in anns:
        a["category_id"] = {1: 10, 2: 20, 3: 30}[a["category_id"]]
    anns.append({"id": 99, "image_id": 3, "category_id": 30, "iscrowd": 0, "area": 4.0,
                 "segmentation": [[0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0]]})
    doc = {"images": [{"id": 3, "file_name": "task_1/images/ref.png", "height": 30, "width": 40},
                      {"id": 4, "file_name": "other.png", "height": 30, "width": 40}],
           "annotations": anns,
           "categories": [{"id": 10, "name": "skin"}, {"id": 20, "name": "eye"}, {"id": 30, "name": "hat"}]}
    path = tmp_path / "cvat.json"
    path.write_text(json.dumps(doc))
    mask, labels, size = read_reference_coco(path, ["images/ref.png", "ref.png"])
    assert size == (30, 40)
    assert labels.names == {0: "background", 10: "skin", 20: "eye", 30: "hat"}
    expected = np.vectorize({0: 0, 1: 10, 2: 20, 3: 30}.get)(m)
    expected[0:2, 0:2] = 30
    np.testing.assert_array_equal(mask, expected)
    # Mapped by name onto a given labels file.
    given = LabelSet(names={0: "background", 1: "hat", 2: "skin", 3: "eye"}, colours={})
    mask2, _, _ = read_reference_coco(path, ["ref.png"], given)
    assert set(np.unique(mask2)) == {0, 1, 2, 3}
    with pytest.raises(UserError, match="no image entry"):
        read_reference_coco(path, ["missing.png"])
    with pytest.raises(UserError, match="no annotations"):
        read_reference_coco(path, ["other.png"])
    with pytest.raises(UserError, match="not in the labels file"):
        read_reference_coco(path, ["ref.png"], LabelSet(names={0: "background", 1: "skin"}, colours={}))


def test_document_shape() -> None:
    doc = coco_document([], [], labels_from_names(["background", "x"]))
    assert set(doc) >= {"images", "annotations", "categories"}
    assert doc["categories"] == [{"id": 1, "name": "x", "supercategory": "object"}]
