"""Canonical category templates for the synthetic data generator (``coordgan synth``).

A category is drawn once, in the canonical frame ``[-1, 1]^2`` (``u`` across columns, ``v`` down
rows, the layout of the correspondence store). Parts are analytic shapes painted in order (later
parts cover earlier ones), so the part id of ANY canonical coordinate can be computed exactly —
that is what makes the generator's correspondence ground truth: a pixel's part is the template's
part at the pixel's canonical coordinate, nothing else.

Every shape is a *field* ``f(u, v)``: ``f > 0`` inside, roughly ``1`` deep inside, so one number
gives both membership and a dome-like depth for shading. Boolean combinations are ``min``/``max``.
The field functions use only NumPy ufuncs, so they run on whole arrays (the generator) and on
Python floats (the per-pixel reference loop in ``benchmarks/synth.py``) alike.

Keypoints are canonical coordinates of the template; the generator finds them in each image by
inverting the instance's map exactly (sub-pixel Newton iterations).

Names ``left_*`` / ``right_*`` mean the image-left (``u < 0``) / image-right (``u > 0``) side in
the canonical pose, not the subject's own left; a mirrored instance keeps the names attached to
the canonical side.
"""

from __future__ import annotations

import math
import abc
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from coordgan_cli.errors import UserError

# ---------------------------------------------------------------------------------------------
# Shapes (fields in the canonical frame)
# ---------------------------------------------------------------------------------------------


class Shape(abc.ABC):
    """A region of the canonical frame given by a field: ``field(u, v) > 0`` inside."""

    @abc.abstractmethod
    def field(self, u: Any, v: Any) -> Any:
        """Signed field over canonical coordinates: positive inside the region."""

    @abc.abstractmethod
    def bounds(self) -> tuple[float, float, float, float]:
        """A box ``(u_min, u_max, v_min, v_max)`` that holds the whole region (may be infinite)."""

    # CSG sugar: a & b (intersection), a | b (union), a - b (difference).
    def __and__(self, other: "Shape") -> "Shape":
        return Intersection(self, other)

    def __or__(self, other: "Shape") -> "Shape":
        return Union(self, other)

    def __sub__(self, other: "Shape") -> "Shape":
        return Difference(self, other)


@dataclass(frozen=True, eq=False)
class Ellipse(Shape):
    """Ellipse centred at (cu, cv) with semi-axes (a, b), rotated by ``angle`` degrees."""

    cu: float
    cv: float
    a: float
    b: float
    angle: float = 0.0

    def field(self, u, v):
        du, dv = u - self.cu, v - self.cv
        if self.angle:
            c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
            du, dv = c * du + s * dv, -s * du + c * dv
        x, y = du * (1.0 / self.a), dv * (1.0 / self.b)
        return 1.0 - (x * x + y * y)

    def bounds(self):
        t = math.radians(self.angle)
        hu = math.hypot(self.a * math.cos(t), self.b * math.sin(t))
        hv = math.hypot(self.a * math.sin(t), self.b * math.cos(t))
        return (self.cu - hu, self.cu + hu, self.cv - hv, self.cv + hv)


@dataclass(frozen=True, eq=False)
class SuperEllipse(Shape):
    """A rounded box ``|x/a|^n + |y/b|^n <= 1`` with even ``n`` (4, 6 or 8), centred at (cu, cv)."""

    cu: float
    cv: float
    a: float
    b: float
    n: int = 4

    def __post_init__(self) -> None:
        if self.n not in (2, 4, 6, 8):
            raise ValueError("SuperEllipse exponent must be 2, 4, 6 or 8")

    def field(self, u, v):
        x, y = (u - self.cu) * (1.0 / self.a), (v - self.cv) * (1.0 / self.b)
        x2, y2 = x * x, y * y
        # Even powers by repeated multiplication: exact and far cheaper than np.power.
        px, py = x2, y2
        for _ in range(self.n // 2 - 1):
            px, py = px * x2, py * y2
        return 1.0 - (px + py)

    def bounds(self):
        return (self.cu - self.a, self.cu + self.a, self.cv - self.b, self.cv + self.b)


@dataclass(frozen=True, eq=False)
class Polygon(Shape):
    """A convex polygon (vertices in order, either orientation); the field is the smallest
    distance to an edge divided by the centroid's, so it is 1 at the centroid."""

    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        pts = np.asarray(self.vertices, dtype=np.float64)
        area2 = float(np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1]))
        sign = 1.0 if area2 > 0 else -1.0
        centroid = pts.mean(axis=0)
        edges = []
        for i in range(len(pts)):
            p, q = pts[i], pts[(i + 1) % len(pts)]
            d = q - p
            # Inward normal for the polygon's orientation.
            normal = sign * np.array([-d[1], d[0]]) / np.hypot(d[0], d[1])
            edges.append((float(normal[0]), float(normal[1]), float(normal @ p)))
        depth = min(nu * centroid[0] + nv * centroid[1] - off for nu, nv, off in edges)
        if depth <= 0:
            raise ValueError("Polygon must be convex with its centroid inside")
        object.__setattr__(self, "_edges", tuple((nu / depth, nv / depth, off / depth) for nu, nv, off in edges))

    def field(self, u, v):
        out = None
        for nu, nv, off in self._edges:  # type: ignore[attr-defined]
            d = nu * u + nv * v - off
            out = d if out is None else np.minimum(out, d)
        return out

    def bounds(self):
        us, vs = [p[0] for p in self.vertices], [p[1] for p in self.vertices]
        return (min(us), max(us), min(vs), max(vs))


@dataclass(frozen=True, eq=False)
class HalfPlane(Shape):
    """``nu * u + nv * v <= d`` (a clipping region; its field is the scaled signed distance)."""

    nu: float
    nv: float
    d: float
    scale: float = 0.2

    def field(self, u, v):
        return (self.d - (self.nu * u + self.nv * v)) * (1.0 / self.scale)

    def bounds(self):
        inf = math.inf
        if self.nu == 0 and self.nv > 0:
            return (-inf, inf, -inf, self.d / self.nv)
        if self.nu == 0 and self.nv < 0:
            return (-inf, inf, self.d / self.nv, inf)
        if self.nv == 0 and self.nu > 0:
            return (-inf, self.d / self.nu, -inf, inf)
        if self.nv == 0 and self.nu < 0:
            return (self.d / self.nu, inf, -inf, inf)
        return (-inf, inf, -inf, inf)


@dataclass(frozen=True, eq=False)
class Union(Shape):
    first: Shape
    second: Shape

    def field(self, u, v):
        return np.maximum(self.first.field(u, v), self.second.field(u, v))

    def bounds(self):
        a, b = self.first.bounds(), self.second.bounds()
        return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


@dataclass(frozen=True, eq=False)
class Intersection(Shape):
    first: Shape
    second: Shape

    def field(self, u, v):
        return np.minimum(self.first.field(u, v), self.second.field(u, v))

    def bounds(self):
        a, b = self.first.bounds(), self.second.bounds()
        return (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))


@dataclass(frozen=True, eq=False)
class Difference(Shape):
    first: Shape
    second: Shape

    def field(self, u, v):
        return np.minimum(self.first.field(u, v), -self.second.field(u, v))

    def bounds(self):
        return self.first.bounds()


# ---------------------------------------------------------------------------------------------
# Categories
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeHandle:
    """A per-instance shape parameter: a smooth local warp of the canonical frame.

    ``kind="scale"``: radial scaling about ``centre`` by a factor ``1 + a * exp(-r^2 / 2 sigma^2)``
    (a part grows or shrinks); ``kind="shift"``: translation by ``a * direction *
    exp(-r^2 / 2 sigma^2)`` (a part moves). ``a`` is drawn uniformly in ``[-amount, amount]``
    (times the difficulty's factor). Amounts are small enough that the map never folds.
    """

    kind: str
    centre: tuple[float, float]
    sigma: float
    amount: float
    direction: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Material:
    """How a part is painted: a base colour sampler and its shading knobs."""

    colour: Callable[[np.random.Generator, dict], tuple[float, float, float]]
    gradient: float = 0.15  # amplitude of a random linear gradient in canonical coordinates
    dome: float = 0.25  # darkening towards the part's edge (a cheap 3-D look)
    stripes: float = 0.0  # amplitude of random sinusoidal stripes (hair strands, fabric)
    pupil: bool = False  # dark centre (irises)


@dataclass(frozen=True)
class Category:
    """A canonical template: part labels, painting order, keypoints, shape handles, materials.

    ``labels``: ``(id, name, rgb)`` for every class, id 0 = background.
    ``parts``: ``(part_id, Shape)`` painted in order. ``keypoints``: ``(name, (u, v))``.
    ``skeleton``: pairs of 1-based keypoint indices (COCO convention).
    ``palette``: samples shared colours for one instance (e.g. one skin tone for skin, ears and
    nose); ``materials`` maps part id → Material, whose colour sampler reads that dict.
    """

    name: str
    description: str
    labels: tuple[tuple[int, str, tuple[int, int, int]], ...]
    parts: tuple[tuple[int, Shape], ...]
    keypoints: tuple[tuple[str, tuple[float, float]], ...]
    skeleton: tuple[tuple[int, int], ...]
    handles: tuple[ShapeHandle, ...]
    palette: Callable[[np.random.Generator], dict]
    materials: dict[int, Material]

    @property
    def num_classes(self) -> int:
        return max(i for i, _, _ in self.labels) + 1

    @property
    def keypoint_names(self) -> list[str]:
        return [n for n, _ in self.keypoints]

    @property
    def keypoint_coords(self) -> np.ndarray:
        """(K, 2) float64 canonical (u, v) of the keypoints."""
        return np.array([c for _, c in self.keypoints], dtype=np.float64)

    def part_id(self, name: str) -> int:
        for i, n, _ in self.labels:
            if n == name:
                return i
        raise KeyError(name)


def render_parts(category: Category, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Part ids of canonical coordinates, painted in the template's order.

    Takes ``u``, ``v``: float arrays of one shape (any). Returns ``ids`` uint8 (same shape, 0 =
    background) and ``depth`` float32 (the winning part's field, 0 on background). Applying this
    to a ground-truth store's coordinates reproduces the synthetic masks exactly (every field is
    elementwise, so the result of a pixel does not depend on how the arrays are cut up).
    """
    u, v = np.asarray(u), np.asarray(v)
    if u.ndim == 2 and min(u.shape) >= 32:
        return _render_parts_tiled(category, u, v, max(8, max(u.shape) // 32))
    ids = np.zeros(u.shape, dtype=np.uint8)
    depth = np.zeros(u.shape, dtype=np.float32)
    for part_id, shape in category.parts:
        f = shape.field(u, v)
        inside = f > 0
        np.copyto(ids, part_id, where=inside)
        np.copyto(depth, f, where=inside, casting="same_kind")
    return ids, depth


def _render_parts_tiled(category: Category, u: np.ndarray, v: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_parts` on an image grid, evaluating each part only on the ``tile`` × ``tile``
    pixel blocks whose coordinate range meets the part's bounding box (small parts — eyes,
    lights, handles — touch a few blocks, so most of the per-part work is skipped)."""
    h, w = u.shape
    th, tw = -(-h // tile), -(-w // tile)
    far = np.float32(8.0) if u.dtype == np.float32 else 8.0  # padding lies outside every part

    def blocks(a: np.ndarray) -> np.ndarray:
        padded = np.full((th * tile, tw * tile), far, dtype=a.dtype)
        padded[:h, :w] = a
        return padded.reshape(th, tile, tw, tile).transpose(0, 2, 1, 3).reshape(th * tw, tile * tile)

    ub, vb = blocks(u), blocks(v)
    umin, umax, vmin, vmax = ub.min(axis=1), ub.max(axis=1), vb.min(axis=1), vb.max(axis=1)
    ids = np.zeros(ub.shape, dtype=np.uint8)
    depth = np.zeros(ub.shape, dtype=np.float32)
    for part_id, shape in category.parts:
        b0, b1, b2, b3 = shape.bounds()
        sel = np.flatnonzero((umax >= b0) & (umin <= b1) & (vmax >= b2) & (vmin <= b3))
        if sel.size == 0:
            continue
        f = shape.field(ub[sel], vb[sel])
        inside = f > 0
        ids[sel] = np.where(inside, np.uint8(part_id), ids[sel])
        depth[sel] = np.where(inside, f, depth[sel])

    def unblock(a: np.ndarray) -> np.ndarray:
        return a.reshape(th, tw, tile, tile).transpose(0, 2, 1, 3).reshape(th * tile, tw * tile)[:h, :w].copy()

    return unblock(ids), unblock(depth)


def render_part_scalar(category: Category, u: float, v: float) -> tuple[int, float]:
    """The same as :func:`render_parts` for one coordinate, by a plain loop (reference)."""
    part, depth = 0, 0.0
    for part_id, shape in category.parts:
        f = float(shape.field(u, v))
        if f > 0:
            part, depth = part_id, f
    return part, depth


# --- colour helpers --------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """HSV (h in degrees) → RGB in [0, 1]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return (r + m, g + m, b + m)


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.04) -> tuple[float, float, float]:
    out = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return (float(out[0]), float(out[1]), float(out[2]))


def _scale(rgb, factor: float) -> tuple[float, float, float]:
    return tuple(float(min(1.0, max(0.0, c * factor))) for c in rgb)  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    return _hsv(rng.uniform(0, 360), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))


# --- faces -----------------------------------------------------------------------------------

_FACE_LABELS = (
    (0, "background", (0, 0, 0)),
    (1, "skin", (204, 153, 119)),
    (2, "neck", (153, 102, 51)),
    (3, "cloth", (0, 102, 204)),
    (4, "hair", (102, 51, 0)),
    (5, "left_ear", (255, 204, 0)),
    (6, "right_ear", (204, 255, 0)),
    (7, "left_brow", (51, 0, 102)),
    (8, "right_brow", (102, 0, 153)),
    (9, "left_eye", (0, 255, 255)),
    (10, "right_eye", (0, 204, 153)),
    (11, "left_iris", (0, 0, 255)),
    (12, "right_iris", (0, 128, 255)),
    (13, "nose", (255, 128, 0)),
    (14, "upper_lip", (255, 0, 128)),
    (15, "lower_lip", (204, 0, 0)),
    (16, "mouth", (128, 0, 64)),
)


def _face_parts() -> tuple[tuple[int, Shape], ...]:
    hair_cap = Ellipse(0.0, -0.2, 0.74, 0.74)
    hair_back = hair_cap & HalfPlane(0.0, 1.0, 0.3)
    face = Ellipse(0.0, -0.03, 0.53, 0.67)
    fringe = (Ellipse(0.0, -0.22, 0.7, 0.62) - Ellipse(0.0, 0.12, 0.5, 0.56)) & HalfPlane(0.0, 1.0, 0.0)
    parts: list[tuple[int, Shape]] = [
        (4, hair_back),
        (2, SuperEllipse(0.0, 0.6, 0.21, 0.3, 4)),
        (3, SuperEllipse(0.0, 1.1, 0.9, 0.32, 4) & HalfPlane(0.0, 1.0, 0.95)),
        (5, Ellipse(-0.56, 0.04, 0.1, 0.17, -8.0)),
        (6, Ellipse(0.56, 0.04, 0.1, 0.17, 8.0)),
        (1, face),
        (4, fringe),
        (7, Ellipse(-0.23, -0.27, 0.14, 0.036, 8.0)),
        (8, Ellipse(0.23, -0.27, 0.14, 0.036, -8.0)),
        (9, Ellipse(-0.22, -0.12, 0.11, 0.056)),
        (10, Ellipse(0.22, -0.12, 0.11, 0.056)),
        (11, Ellipse(-0.22, -0.12, 0.048, 0.048) & Ellipse(-0.22, -0.12, 0.11, 0.056)),
        (12, Ellipse(0.22, -0.12, 0.048, 0.048) & Ellipse(0.22, -0.12, 0.11, 0.056)),
        (13, Polygon(((0.0, -0.08), (0.085, 0.15), (-0.085, 0.15))) | Ellipse(0.0, 0.15, 0.1, 0.055)),
        (14, Ellipse(0.0, 0.38, 0.18, 0.07) & HalfPlane(0.0, 1.0, 0.38, 0.05)),
        (15, Ellipse(0.0, 0.38, 0.16, 0.085) & HalfPlane(0.0, -1.0, -0.38, 0.05)),
        (16, Ellipse(0.0, 0.38, 0.13, 0.022)),
    ]
    return tuple(parts)


_FACE_KEYPOINTS = (
    ("left_eye", (-0.22, -0.12)),
    ("right_eye", (0.22, -0.12)),
    ("left_eye_outer", (-0.315, -0.12)),
    ("left_eye_inner", (-0.125, -0.12)),
    ("right_eye_inner", (0.125, -0.12)),
    ("right_eye_outer", (0.315, -0.12)),
    ("left_brow_outer", (-0.34, -0.25)),
    ("left_brow_inner", (-0.12, -0.285)),
    ("right_brow_inner", (0.12, -0.285)),
    ("right_brow_outer", (0.34, -0.25)),
    ("nose_tip", (0.0, 0.14)),
    ("mouth_left", (-0.15, 0.38)),
    ("mouth_right", (0.15, 0.38)),
    ("upper_lip", (0.0, 0.335)),
    ("lower_lip", (0.0, 0.43)),
    ("chin", (0.0, 0.58)),
    ("left_ear", (-0.57, 0.04)),
    ("right_ear", (0.57, 0.04)),
)

_FACE_SKELETON = (
    (3, 1), (1, 4), (5, 2), (2, 6), (7, 8), (9, 10), (4, 11), (5, 11), (11, 14),
    (12, 14), (14, 13), (12, 15), (15, 13), (15, 16), (17, 3), (18, 6),
)

_FACE_HANDLES = (
    ShapeHandle("scale", (-0.22, -0.12), 0.13, 0.25),
    ShapeHandle("scale", (0.22, -0.12), 0.13, 0.25),
    ShapeHandle("scale", (0.0, 0.38), 0.13, 0.25),
    ShapeHandle("scale", (0.0, 0.08), 0.13, 0.2),
    ShapeHandle("shift", (0.0, -0.5), 0.27, 0.08, (0.0, 1.0)),  # forehead height
    ShapeHandle("shift", (-0.45, 0.45), 0.27, 0.07, (1.0, 0.0)),  # jaw width
    ShapeHandle("shift", (0.45, 0.45), 0.27, 0.07, (-1.0, 0.0)),
    ShapeHandle("shift", (0.0, 0.6), 0.27, 0.06, (0.0, 1.0)),  # chin length
    ShapeHandle("shift", (0.0, -0.27), 0.27, 0.04, (0.0, 1.0)),  # brow height
)

_SKIN_TONES = ((0.96, 0.80, 0.69), (0.92, 0.72, 0.58), (0.80, 0.60, 0.45), (0.63, 0.45, 0.33),
               (0.45, 0.31, 0.22), (0.33, 0.22, 0.15), (0.98, 0.86, 0.78))
_HAIR = ((0.08, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.30, 0.15), (0.85, 0.70, 0.40),
         (0.60, 0.25, 0.10), (0.70, 0.70, 0.70), (0.92, 0.92, 0.90))
_IRIS = ((0.25, 0.45, 0.75), (0.30, 0.55, 0.35), (0.40, 0.25, 0.12), (0.50, 0.55, 0.60),
         (0.15, 0.10, 0.06))


def _face_palette(rng: np.random.Generator) -> dict:
    skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 0.05)
    hair = (_jitter(rng, _HAIR[rng.integers(len(_HAIR))], 0.05) if rng.random() < 0.85
            else _random_colour(rng))  # sometimes dyed
    lips = _jitter(rng, (min(1.0, skin[0] * 0.95 + 0.1), skin[1] * 0.55, skin[2] * 0.6), 0.05)
    return {
        "skin": skin,
        "hair": hair,
        "iris": _jitter(rng, _IRIS[rng.integers(len(_IRIS))], 0.05),
        "lips": lips,
        "cloth": _random_colour(rng),
    }


def _face_materials() -> dict[int, Material]:
    return {
        1: Material(lambda r, p: p["skin"], gradient=0.12, dome=0.3),
        2: Material(lambda r, p: _scale(p["skin"], 0.82), gradient=0.15, dome=0.3),
        3: Material(lambda r, p: p["cloth"], gradient=0.25, dome=0.2, stripes=0.25),
        4: Material(lambda r, p: p["hair"], gradient=0.2, dome=0.15, stripes=0.18),
        5: Material(lambda r, p: _scale(p["skin"], 0.9), dome=0.35),
        6: Material(lambda r, p: _scale(p["skin"], 0.9), dome=0.35),
        7: Material(lambda r, p: _scale(p["hair"], 0.8), dome=0.1),
        8: Material(lambda r, p: _scale(p["hair"], 0.8), dome=0.1),
        9: Material(lambda r, p: _jitter(r, (0.93, 0.92, 0.9), 0.03), dome=0.3),
        10: Material(lambda r, p: _jitter(r, (0.93, 0.92, 0.9), 0.03), dome=0.3),
        11: Material(lambda r, p: p["iris"], dome=0.2, pupil=True),
        12: Material(lambda r, p: p["iris"], dome=0.2, pupil=True),
        13: Material(lambda r, p: _scale(p["skin"], 0.93), gradient=0.25, dome=0.35),
        14: Material(lambda r, p: _scale(p["lips"], 0.9), dome=0.3),
        15: Material(lambda r, p: p["lips"], dome=0.3),
        16: Material(lambda r, p: _jitter(r, (0.3, 0.05, 0.08), 0.04), dome=0.2),
    }


# --- cars (side view, front to the right) ----------------------------------------------------

_CAR_LABELS = (
    (0, "background", (0, 0, 0)),
    (1, "body", (200, 30, 30)),
    (2, "roof", (230, 120, 40)),
    (3, "front_window", (80, 170, 255)),
    (4, "rear_window", (40, 90, 200)),
    (5, "front_wheel", (60, 60, 60)),
    (6, "rear_wheel", (110, 110, 110)),
    (7, "front_rim", (200, 200, 200)),
    (8, "rear_rim", (160, 160, 220)),
    (9, "headlight", (255, 240, 80)),
    (10, "tail_light", (255, 0, 160)),
    (11, "front_bumper", (0, 160, 80)),
    (12, "rear_bumper", (120, 200, 0)),
    (13, "mirror", (160, 0, 200)),
    (14, "door_handle", (0, 220, 220)),
)

_DY = -0.12  # shifts the whole car so that it is centred vertically in the canonical square
_FRONT_WHEEL = (0.55, 0.42 + _DY)
_REAR_WHEEL = (-0.57, 0.42 + _DY)


def _car_parts() -> tuple[tuple[int, Shape], ...]:
    def P(*pts):
        return Polygon(tuple((x, y + _DY) for x, y in pts))

    arches = Ellipse(_FRONT_WHEEL[0], _FRONT_WHEEL[1], 0.215, 0.215) | Ellipse(_REAR_WHEEL[0], _REAR_WHEEL[1], 0.215, 0.215)
    body = (SuperEllipse(0.0, 0.22 + _DY, 0.9, 0.22, 6) | SuperEllipse(0.05, 0.12 + _DY, 0.86, 0.16, 4)) - arches
    parts: list[tuple[int, Shape]] = [
        (2, P((-0.66, 0.04), (-0.47, -0.3), (0.16, -0.3), (0.52, 0.04))),
        (1, body),
        (11, SuperEllipse(0.9, 0.3 + _DY, 0.065, 0.085, 4)),
        (12, SuperEllipse(-0.9, 0.3 + _DY, 0.06, 0.085, 4)),
        (4, P((-0.56, 0.0), (-0.42, -0.245), (-0.08, -0.245), (-0.08, 0.0))),
        (3, P((-0.03, 0.0), (-0.03, -0.245), (0.14, -0.245), (0.42, 0.0))),
        (9, Ellipse(0.84, 0.1 + _DY, 0.075, 0.04, -10.0)),
        (10, SuperEllipse(-0.875, 0.09 + _DY, 0.04, 0.055, 4)),
        (13, Ellipse(0.38, -0.02 + _DY, 0.05, 0.032)),
        (14, SuperEllipse(0.06, 0.12 + _DY, 0.05, 0.013, 4)),
        (14, SuperEllipse(-0.3, 0.12 + _DY, 0.05, 0.013, 4)),
        (5, Ellipse(*_FRONT_WHEEL, 0.18, 0.18)),
        (6, Ellipse(*_REAR_WHEEL, 0.18, 0.18)),
        (7, Ellipse(*_FRONT_WHEEL, 0.1, 0.1)),
        (8, Ellipse(*_REAR_WHEEL, 0.1, 0.1)),
    ]
    return tuple(parts)


_CAR_KEYPOINTS = (
    ("front_wheel_centre", _FRONT_WHEEL),
    ("rear_wheel_centre", _REAR_WHEEL),
    ("front_wheel_bottom", (_FRONT_WHEEL[0], _FRONT_WHEEL[1] + 0.15)),
    ("rear_wheel_bottom", (_REAR_WHEEL[0], _REAR_WHEEL[1] + 0.15)),
    ("headlight", (0.84, 0.1 + _DY)),
    ("tail_light", (-0.875, 0.09 + _DY)),
    ("front_bumper", (0.92, 0.3 + _DY)),
    ("rear_bumper", (-0.92, 0.3 + _DY)),
    ("roof_front", (0.13, -0.28 + _DY)),
    ("roof_rear", (-0.44, -0.28 + _DY)),
    ("windshield_base", (0.45, 0.02 + _DY)),
    ("rear_window_base", (-0.6, 0.02 + _DY)),
    ("mirror", (0.38, -0.02 + _DY)),
    ("front_door_handle", (0.06, 0.12 + _DY)),
    ("rear_door_handle", (-0.3, 0.12 + _DY)),
    ("b_pillar", (-0.055, -0.12 + _DY)),
)

_CAR_SKELETON = (
    (1, 3), (2, 4), (1, 2), (5, 7), (6, 8), (9, 10), (9, 11), (10, 12), (11, 13),
    (14, 15), (16, 9), (16, 14), (5, 1), (6, 2),
)

_CAR_HANDLES = (
    ShapeHandle("scale", _FRONT_WHEEL, 0.16, 0.2),
    ShapeHandle("scale", _REAR_WHEEL, 0.16, 0.2),
    ShapeHandle("shift", (-0.1, -0.4 + _DY), 0.3, 0.08, (0.0, 1.0)),  # roof height
    ShapeHandle("shift", (0.85, 0.15 + _DY), 0.3, 0.07, (1.0, 0.0)),  # front overhang
    ShapeHandle("shift", (-0.85, 0.15 + _DY), 0.3, 0.07, (1.0, 0.0)),  # rear overhang
    ShapeHandle("shift", (0.0, -0.2 + _DY), 0.3, 0.06, (1.0, 0.0)),  # cabin position
    ShapeHandle("shift", (0.0, 0.3 + _DY), 0.3, 0.04, (0.0, 1.0)),  # ride height
)


def _car_palette(rng: np.random.Generator) -> dict:
    if rng.random() < 0.35:  # white, silver, grey and black are the commonest car colours
        grey = rng.choice([0.08, 0.3, 0.55, 0.75, 0.92])
        paint = _jitter(rng, (grey, grey, grey), 0.04)
    else:
        paint = _hsv(rng.uniform(0, 360), rng.uniform(0.4, 0.95), rng.uniform(0.3, 0.95))
    glass = _jitter(rng, (0.15, 0.2, 0.28), 0.06)
    return {
        "paint": paint,
        "glass": glass,
        "rim": _jitter(rng, (0.75, 0.75, 0.78), 0.1) if rng.random() < 0.7 else _jitter(rng, (0.15, 0.15, 0.15), 0.05),
        "trim": paint if rng.random() < 0.6 else _jitter(rng, (0.12, 0.12, 0.12), 0.04),
    }


def _car_materials() -> dict[int, Material]:
    return {
        1: Material(lambda r, p: p["paint"], gradient=0.3, dome=0.25),
        2: Material(lambda r, p: _scale(p["paint"], 0.92), gradient=0.25, dome=0.15),
        3: Material(lambda r, p: p["glass"], gradient=0.6, dome=0.05, stripes=0.15),
        4: Material(lambda r, p: _scale(p["glass"], 0.9), gradient=0.6, dome=0.05, stripes=0.15),
        5: Material(lambda r, p: _jitter(r, (0.07, 0.07, 0.07), 0.03), dome=0.3),
        6: Material(lambda r, p: _jitter(r, (0.07, 0.07, 0.07), 0.03), dome=0.3),
        7: Material(lambda r, p: p["rim"], dome=0.4, stripes=0.2),
        8: Material(lambda r, p: p["rim"], dome=0.4, stripes=0.2),
        9: Material(lambda r, p: _jitter(r, (0.98, 0.95, 0.8), 0.03), dome=0.2),
        10: Material(lambda r, p: _jitter(r, (0.85, 0.08, 0.08), 0.05), dome=0.2),
        11: Material(lambda r, p: p["trim"], gradient=0.2, dome=0.3),
        12: Material(lambda r, p: p["trim"], gradient=0.2, dome=0.3),
        13: Material(lambda r, p: _scale(p["paint"], 0.85), dome=0.3),
        14: Material(lambda r, p: _jitter(r, (0.15, 0.15, 0.15), 0.05), dome=0.1),
    }


CATEGORIES: dict[str, Category] = {
    "faces": Category(
        name="faces",
        description="frontal face: skin, neck, cloth, hair, ears, brows, eyes, irises, nose, lips, mouth",
        labels=_FACE_LABELS,
        parts=_face_parts(),
        keypoints=_FACE_KEYPOINTS,
        skeleton=_FACE_SKELETON,
        handles=_FACE_HANDLES,
        palette=_face_palette,
        materials=_face_materials(),
    ),
    "cars": Category(
        name="cars",
        description="side view of a car facing right: body, roof, windows, wheels, rims, lights, bumpers",
        labels=_CAR_LABELS,
        parts=_car_parts(),
        keypoints=_CAR_KEYPOINTS,
        skeleton=_CAR_SKELETON,
        handles=_CAR_HANDLES,
        palette=_car_palette,
        materials=_car_materials(),
    ),
}


def get_category(name: str) -> Category:
    """The category called ``name``; an unknown name is a UserError listing the known ones."""
    try:
        return CATEGORIES[name]
    except KeyError:
        known = ", ".join(sorted(CATEGORIES))
        raise UserError(f"--category: unknown category {name!r}; known categories: {known}") from None


def category_names() -> list[str]:
    return sorted(CATEGORIES)

