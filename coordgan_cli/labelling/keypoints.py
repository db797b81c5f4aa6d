"""Reference keypoints (COCO keypoints file) carried to every query through correspondence maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from coordgan_cli.errors import UserError
from coordgan_cli.labelling.references import References


def read_reference_keypoints(path: Path, references: References
                             ) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    """(category dict, [(xy (K, 2), visible (K,))] per reference) from a COCO keypoints file."""
    from coordgan_cli.io.coco import _match_image
    from coordgan_cli.io.jsonfile import read_json

    data = read_json(path, "keypoints file")
    cats = [c for c in data.get("categories", []) if c.get("keypoints")]
    if not cats or "images" not in data or "annotations" not in data:
        raise UserError(f"{path}: not a COCO keypoints file (needs images, annotations and a category with keypoints)")
    category = {k: cats[0][k] for k in ("id", "name", "keypoints", "skeleton") if k in cats[0]}
    k = len(category["keypoints"])
    out = []
    matched = 0
    for candidates in references.store_names:
        image = _match_image(data["images"], candidates)
        xy, vis = np.zeros((k, 2)), np.zeros(k, bool)
        if image is not None:
            anns = [a for a in data["annotations"] if a.get("image_id") == image["id"] and a.get("keypoints")]
            if anns:
                kp = np.asarray(anns[0]["keypoints"], dtype=np.float64).reshape(-1, 3)
                if kp.shape[0] != k:
                    raise UserError(f"{path}: image {image.get('file_name')!r} has {kp.shape[0]} keypoints, "
                                    f"category has {k}")
                # Pixel-index coordinates (integer = pixel centre), as `coordgan synth` writes them.
                xy, vis = kp[:, :2], kp[:, 2] > 0
                matched += 1
        out.append((xy, vis))
    if not matched:
        raise UserError(f"{path}: none of the references ({', '.join(references.names)}) has keypoints there")
    return category, out


def keypoint_annotation(kp: Any, image_id: int, category_id: int) -> dict[str, Any]:
    """A COCO keypoint annotation from a ``correspondence.keypoints.KeypointTransfer``."""
    flat: list[float] = []
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
