"""Synthetic object categories with exact ground-truth correspondence (pure generation).

Each image of a category is made like this:

1. an instance map ``M`` from image pixels to the canonical frame is drawn: inverse pose
   (similarity + aspect + shear, optional mirror flip), a smooth elastic deformation (a random
   Gaussian radial-basis displacement field on a jittered 4 x 4 grid), and per-instance shape handles (local radial scalings and shifts that move, grow or shrink
   parts). ``M`` is a smooth analytic function, so it can be evaluated anywhere;
2. every pixel centre ``p`` gets the canonical coordinate ``c = M(p)`` (float32); the template's
   part at ``c`` (:func:`~coordgan_cli.data.categories.render_parts`) is the pixel's part id. The
   ground-truth correspondence of the pixel is that very ``c`` — no estimation afterwards;
3. parts are painted with random per-part colours, canonical-frame gradients and stripes, dome
   shading and a pupil for irises, over a random background (gradients, low-frequency noise,
   clutter shapes); global lighting and noise follow; ``hard`` adds occluders (their pixels are
   neither object in the mask nor ``valid``), stronger deformation, more clutter and flips;
4. the category's canonical keypoints are found in the image by inverting ``M`` with Newton
   iterations (sub-pixel exact); COCO visibility 2 = visible, 1 = in the image but covered, 0 =
   outside the image.

Pixel conventions: pixel ``(row i, column j)`` has its centre at normalised image coordinates
``x = (j + 0.5) * 2 / S - 1``, ``y = (i + 0.5) * 2 / S - 1``; keypoint ``(x, y)`` are pixel-index
coordinates (COCO: integer values are pixel centres).

Determinism: everything for image ``index`` comes from ``np.random.default_rng([seed, index])``
(instance parameters, drawn before anything size-dependent, so one seed gives the same instance at
every size) and ``np.random.default_rng([seed, index, 1])`` (per-pixel noise). Nothing is threaded;
the one BLAS call (a small matrix product in :meth:`InstanceMap.grid`) computes each output as one
short dot product, so results do not depend on thread counts (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union as TUnion

import cv2
import numpy as np

from coordgan_cli.data.categories import Category, get_category, render_part_scalar, render_parts
from coordgan_cli.errors import UserError

# Raised whenever a change alters the images of a given (category, seed, index, size,
# difficulty); recorded in metadata.json so a set is never resumed by a different generator.
GENERATOR_VERSION = 1

MIN_SIZE = 16
MAX_SIZE = 1024

# Canonical coordinates of template parts stay inside this box (checked by a test), so a pixel
# whose coordinate is clipped to [-1, 1] for the store is never an object pixel.
TEMPLATE_EXTENT = 0.97
# Width of the elastic deformation's Gaussian bumps (canonical units; control points 0.6 apart).
_ELASTIC_SIGMA = 0.4


@dataclass(frozen=True)
class Difficulty:
    """Ranges that instance parameters are drawn from."""

    scale: tuple[float, float]  # canonical square → this fraction of the image side
    rotation: float  # max |degrees|
    translation: float  # max |shift| of the centre, normalised image units
    aspect: float  # max |log aspect|
    shear: float  # max |shear|
    elastic: float  # std of the elastic field's control displacements (canonical units)
    handles: float  # factor on the category's shape-handle amounts
    clutter: tuple[int, int]  # number of background clutter shapes [lo, hi]
    occluders: tuple[int, int]  # number of occluders [lo, hi]
    flip: float  # probability of a mirror flip
    noise_low: float  # low-frequency multiplicative noise amplitude
    noise_high: float  # per-pixel additive noise std
    lighting: float  # global illumination gradient amplitude


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty((0.8, 0.92), 4.0, 0.04, 0.04, 0.0, 0.02, 0.5, (0, 2), (0, 0), 0.0, 0.04, 0.01, 0.1),
    "medium": Difficulty((0.68, 0.92), 12.0, 0.08, 0.1, 0.05, 0.045, 1.0, (2, 6), (0, 0), 0.0, 0.07, 0.02, 0.2),
    "hard": Difficulty((0.55, 1.05), 30.0, 0.22, 0.18, 0.12, 0.08, 1.5, (5, 14), (1, 3), 0.5, 0.1, 0.04, 0.35),
}


def get_difficulty(name: str) -> Difficulty:
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise UserError(f"--difficulty: unknown difficulty {name!r}; choose one of: {', '.join(DIFFICULTIES)}") from None


def check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size: {size} is out of range; synthetic images are {MIN_SIZE} to {MAX_SIZE} pixels square")


# ---------------------------------------------------------------------------------------------
# The instance map: image (normalised) → canonical
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceMap:
    """A smooth map from normalised image coordinates to canonical coordinates.

    ``q = inverse_pose @ (p - translation)`` undoes the pose (similarity + aspect + shear, maybe a
    mirror flip); then ``c = q + sum_j g_j(q) * (offsets_j + radial_j * (q - centres_j))`` with
    Gaussian bumps ``g_j(q) = exp(-|q - centres_j|^2 / (2 sigmas_j^2))``. The bumps are the
    elastic deformation (a random radial-basis displacement field: ``radial = 0``) and the
    category's shape handles (local scalings: ``radial != 0``; local shifts: ``offsets``). Every
    bump fades away from its centre, so far pixels get the pose alone and never fold back onto
    the object; the amounts keep the Jacobian positive.

    Arrays: ``inverse_pose`` (2, 2), ``translation`` (2,), ``centres`` (N, 2), ``sigmas`` (N,),
    ``offsets`` (N, 2), ``radial`` (N,), all float64.
    """

    inverse_pose: np.ndarray
    translation: np.ndarray
    flipped: bool
    centres: np.ndarray
    sigmas: np.ndarray
    offsets: np.ndarray
    radial: np.ndarray

    @property
    def pose(self) -> np.ndarray:
        """(2, 2) forward pose: canonical → normalised image (ignoring deformations)."""
        return np.linalg.inv(self.inverse_pose)

    def __call__(self, x, y):
        """Canonical ``(u, v)`` (float64) of normalised image points ``(x, y)``.

        Takes arrays of any broadcastable shapes (or floats); returns two float64 arrays of the
        broadcast shape. Straightforward evaluation, for a few points (keypoints, references).
        """
        (b00, b01), (b10, b11) = self.inverse_pose.tolist()
        tx, ty = self.translation.tolist()
        dx = np.asarray(x, dtype=np.float64) - tx
        dy = np.asarray(y, dtype=np.float64) - ty
        qu = b00 * dx + b01 * dy
        qv = b10 * dx + b11 * dy
        eu = qu[..., None] - self.centres[:, 0]
        ev = qv[..., None] - self.centres[:, 1]
        g = np.exp((eu * eu + ev * ev) * (-0.5 / (self.sigmas * self.sigmas)))
        u = qu + np.sum(g * (self.offsets[:, 0] + self.radial * eu), axis=-1)
        v = qv + np.sum(g * (self.offsets[:, 1] + self.radial * ev), axis=-1)
        return u, v

    def grid(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonical ``(u, v)`` of every pixel centre of a ``size`` × ``size`` image.

        Returns two float64 (S, S) arrays equal to ``self(x, y)`` on the pixel grid (to rounding),
        computed fast: along the grid ``q`` is affine in the pixel position, so each bump
        factorises into ``exp(-|q|^2 / 2 s^2)`` (one full-image exp per distinct sigma) times a
        row factor times a column factor, and the sum over bumps is a small matrix product.
        """
        (b00, b01), (b10, b11) = self.inverse_pose.tolist()
        tx, ty = self.translation.tolist()
        xs = pixel_centres(size, np.float64)
        dx, dy = xs - tx, xs - ty
        qu = b00 * dx[None, :] + b01 * dy[:, None]
        qv = b10 * dx[None, :] + b11 * dy[:, None]
        qq = qu * qu + qv * qv
        u, v = qu.copy(), qv.copy()
        for sigma in np.unique(self.sigmas):
            sel = self.sigmas == sigma
            m, off, rad = self.centres[sel], self.offsets[sel], self.radial[sel]
            k = 0.5 / (sigma * sigma)
            # |q - m|^2 = |q|^2 - 2 q.m + |m|^2 and q.m = (B^T m).(p - t): separable in (x, y).
            ax = m[:, 0] * b00 + m[:, 1] * b10
            ay = m[:, 0] * b01 + m[:, 1] * b11
            row = np.exp((2.0 * k) * ax[:, None] * dx[None, :] - k * np.sum(m * m, axis=1)[:, None])  # (n, S)
            col_t = np.exp((2.0 * k) * ay[:, None] * dy[None, :]).T  # (S, n)
            # float32 exp (several times faster than float64 here): it only underflows to 0 where
            # |q| is so large that every bump centre (all within |m| < 0.9) is many sigmas away.
            g0 = np.exp((-k * qq).astype(np.float32))
            du = (col_t * (off[:, 0] - rad * m[:, 0])) @ row
            dv = (col_t * (off[:, 1] - rad * m[:, 1])) @ row
            if np.any(rad != 0):
                scale = (col_t * rad) @ row
                du += qu * scale
                dv += qv * scale
            u += g0 * du
            v += g0 * dv
        return u, v


def sample_instance_map(category: Category, difficulty: Difficulty, rng: np.random.Generator) -> InstanceMap:
    """Draws one instance's pose, elastic deformation and shape handles (size independent)."""
    scale = rng.uniform(*difficulty.scale)
    theta = math.radians(rng.uniform(-difficulty.rotation, difficulty.rotation))
    log_aspect = rng.uniform(-difficulty.aspect, difficulty.aspect)
    shear = rng.uniform(-difficulty.shear, difficulty.shear)
    flipped = bool(rng.random() < difficulty.flip)
    # Keep the object's centre where most of it stays in view; hard may cut it.
    translation = rng.uniform(-difficulty.translation, difficulty.translation, 2)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    stretch = np.diag([scale * math.exp(log_aspect), scale * math.exp(-log_aspect)])
    shear_m = np.array([[1.0, shear], [0.0, 1.0]])
    flip_m = np.diag([-1.0 if flipped else 1.0, 1.0])
    pose = rot @ stretch @ shear_m @ flip_m
    # Elastic part: random displacements on a jittered 4 x 4 grid of Gaussian bumps.
    g = np.array([-0.9, -0.3, 0.3, 0.9])
    grid_points = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
    centres = [grid_points + rng.uniform(-0.1, 0.1, grid_points.shape)]
    sigmas = [np.full(len(grid_points), _ELASTIC_SIGMA)]
    offsets = [rng.normal(0.0, difficulty.elastic, grid_points.shape)]
    radial = [np.zeros(len(grid_points))]
    for h in category.handles:
        a = rng.uniform(-h.amount, h.amount) * difficulty.handles
        centres.append(np.array([h.centre]))
        sigmas.append(np.array([h.sigma]))
        if h.kind == "scale":
            offsets.append(np.zeros((1, 2)))
            radial.append(np.array([a]))
        else:
            offsets.append(np.array([[a * h.direction[0], a * h.direction[1]]]))
            radial.append(np.zeros(1))
    return InstanceMap(
        inverse_pose=np.linalg.inv(pose),
        translation=translation,
        flipped=flipped,
        centres=np.concatenate(centres),
        sigmas=np.concatenate(sigmas),
        offsets=np.concatenate(offsets),
        radial=np.concatenate(radial),
    )


# ---------------------------------------------------------------------------------------------
# Appearance parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Appearance:
    """Per-instance colours and shading, indexed by part id (row 0 unused)."""

    base: np.ndarray  # (C, 3) float32 RGB in [0, 1]
    gradient: np.ndarray  # (C, 2) float32 canonical-frame gradient coefficients
    dome: np.ndarray  # (C,) float32
    stripes: tuple[tuple[int, float, float, float, float], ...]  # part, amplitude, ku, kv, phase
    pupils: tuple[tuple[int, float, float], ...]  # part, depth threshold, darkness
    background: tuple[np.ndarray, np.ndarray, float]  # two colours, gradient angle
    lighting: tuple[float, float]  # global gradient coefficients in image coordinates
    clutter: tuple[tuple, ...]
    occluders: tuple[tuple, ...]


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, 3)


def sample_appearance(category: Category, difficulty: Difficulty, rng: np.random.Generator,
                      pose_centre: np.ndarray, pose_scale: float) -> Appearance:
    """Draws textures, background, clutter and occluders (all in normalised image units)."""
    n = category.num_classes
    base = np.zeros((n, 3), np.float32)
    grad = np.zeros((n, 2), np.float32)
    dome = np.zeros(n, np.float32)
    stripes, pupils = [], []
    palette = category.palette(rng)
    for pid in range(1, n):
        m = category.materials[pid]
        base[pid] = m.colour(rng, palette)
        angle, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0, m.gradient)
        grad[pid] = (amp * math.cos(angle), amp * math.sin(angle))
        dome[pid] = m.dome * rng.uniform(0.6, 1.3)
        if m.stripes > 0 and rng.random() < 0.7:
            k, ang = rng.uniform(10, 40), rng.uniform(0, math.pi)
            stripes.append((pid, m.stripes * rng.uniform(0.3, 1.0), k * math.cos(ang), k * math.sin(ang),
                            rng.uniform(0, 2 * math.pi)))
        if m.pupil:
            pupils.append((pid, rng.uniform(0.55, 0.75), rng.uniform(0.05, 0.2)))
    background = (_colour(rng), _colour(rng), rng.uniform(0, 2 * math.pi))
    la = rng.uniform(0, 2 * math.pi)
    lighting = (difficulty.lighting * math.cos(la) * rng.random(), difficulty.lighting * math.sin(la) * rng.random())
    clutter = []
    for _ in range(int(rng.integers(difficulty.clutter[0], difficulty.clutter[1] + 1))):
        kind = ("ellipse", "box", "line", "triangle")[int(rng.integers(4))]
        clutter.append((kind, rng.uniform(-1.1, 1.1, 2), rng.uniform(0.05, 0.45, 2), rng.uniform(0, 180), _colour(rng)))
    occluders = []
    for _ in range(int(rng.integers(difficulty.occluders[0], difficulty.occluders[1] + 1))):
        kind = ("ellipse", "box", "line", "triangle")[int(rng.integers(4))]
        centre = pose_centre + rng.uniform(-0.6, 0.6, 2) * pose_scale
        occluders.append((kind, centre, rng.uniform(0.08, 0.3, 2) * pose_scale, rng.uniform(0, 180), _colour(rng)))
    return Appearance(base, grad, dome, tuple(stripes), tuple(pupils), background, lighting, tuple(clutter), tuple(occluders))


_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel placement, same look at every size


def _draw_shape(canvas: np.ndarray, shape: tuple, size: int, colour) -> None:
    """Draws one clutter/occluder shape (normalised image units) filled into ``canvas`` in place."""
    kind, centre, extent, angle, _ = shape
    to_px = lambda v: (v + 1.0) * 0.5 * size - 0.5  # noqa: E731 - normalised → pixel index
    cx, cy = to_px(centre[0]), to_px(centre[1])
    ex, ey = extent[0] * 0.5 * size, extent[1] * 0.5 * size
    f = 1 << _SHIFT
    if kind == "ellipse":
        cv2.ellipse(canvas, (int(round(cx * f)), int(round(cy * f))), (max(1, int(round(ex * f))), max(1, int(round(ey * f)))),
                    float(angle), 0.0, 360.0, colour, -1, cv2.LINE_8, _SHIFT)
        return
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    if kind == "box":
        corners = [(-ex, -ey), (ex, -ey), (ex, ey), (-ex, ey)]
    elif kind == "triangle":
        corners = [(-ex, ey), (ex, ey), (0.0, -ey)]
    else:  # a thick bar
        corners = [(-ex * 1.5, -ey * 0.12), (ex * 1.5, -ey * 0.12), (ex * 1.5, ey * 0.12), (-ex * 1.5, ey * 0.12)]
    pts = np.array([[int(round((cx + c * px - s * py) * f)), int(round((cy + s * px + c * py) * f))] for px, py in corners],
                   dtype=np.int32)
    cv2.fillConvexPoly(canvas, pts, colour, cv2.LINE_8, _SHIFT)


def _low_frequency_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(S, S, 3) float32 smooth noise with unit-ish amplitude (bicubic upsampling of a grid)."""
    grid = rng.standard_normal((cells, cells, 3), dtype=np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------
# The sample
# ---------------------------------------------------------------------------------------------


@dataclass
class SynthSample:
    """One synthetic image with its ground truth.

    ``image`` uint8 (S, S, 3) RGB; ``mask`` uint8 (S, S) part ids (0 = background and occluders);
    ``correspondence`` float32 (2, S, S): channel 0 = canonical u (across columns), 1 = canonical
    v (down rows), clipped to [-1, 1]; ``valid`` bool (S, S): visible object pixels;
    ``keypoints`` float64 (K, 3): x, y (pixel-index coordinates), COCO visibility 0/1/2.
    """

    image: np.ndarray
    mask: np.ndarray
    correspondence: np.ndarray
    valid: np.ndarray
    keypoints: np.ndarray
    instance_map: InstanceMap = field(repr=False)
    flipped: bool = False


def pixel_centres(size: int, dtype=np.float32) -> np.ndarray:
    """Normalised coordinates of the pixel centres along one axis: (S,) in (-1, 1)."""
    return ((np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0).astype(dtype)


def _rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    return np.random.default_rng([seed, index]), np.random.default_rng([seed, index, 1])


def generate_sample(category: TUnion[str, Category], index: int, *, size: int, seed: int,
                    difficulty: str = "medium") -> SynthSample:
    """Generates image ``index`` of the set (category, seed, difficulty) at ``size`` × ``size``.

    Deterministic in (category, index, size, seed, difficulty). See :class:`SynthSample`.
    """
    cat = get_category(category) if isinstance(category, str) else category
    diff = get_difficulty(difficulty)
    check_size(size)
    rng, noise_rng = _rngs(seed, index)
    imap = sample_instance_map(cat, diff, rng)
    pose_scale = float(np.sqrt(abs(np.linalg.det(imap.pose))))
    look = sample_appearance(cat, diff, rng, imap.translation, pose_scale)

    # 1. Canonical coordinate of every pixel centre. The float32 value is what is rendered AND
    # what is stored: the ground truth is the rendering's own input.
    xs = pixel_centres(size)
    u64, v64 = imap.grid(size)
    u, v = u64.astype(np.float32), v64.astype(np.float32)

    # 2. Parts of every pixel (block-culled evaluation of the template's analytic shapes).
    ids_grid, depth_grid = render_parts(cat, u, v)
    obj = np.flatnonzero(ids_grid.reshape(-1))
    ou, ov = u.reshape(-1)[obj], v.reshape(-1)[obj]
    oid, odepth = ids_grid.reshape(-1)[obj], depth_grid.reshape(-1)[obj]

    # 3. Object colours, background with clutter; compose; occluders on top (out of mask/valid).
    colours = _paint_object(look, oid, ou, ov, odepth)
    image = _background(look, size, xs)
    image.reshape(-1, 3)[obj] = colours
    occluded = np.zeros((size, size), np.uint8)
    for shape in look.occluders:
        _draw_shape(image, shape, size, tuple(float(c) for c in shape[4]))
        _draw_shape(occluded, shape, size, 1)
    image_u8 = _finish(image, look, diff, noise_rng, xs)

    mask = np.where(occluded > 0, np.uint8(0), ids_grid)
    valid = mask > 0
    correspondence = np.clip(np.stack([u, v]), -1.0, 1.0)
    keypoints = locate_keypoints(cat, imap, size, ids_grid, valid)
    return SynthSample(image_u8, mask, correspondence, valid, keypoints, imap, imap.flipped)


def _paint_object(look: Appearance, oid: np.ndarray, ou: np.ndarray, ov: np.ndarray, odepth: np.ndarray) -> np.ndarray:
    """Colours of object pixels: base × (1 + canonical gradient − dome falloff + stripes), dark
    pupils. Takes 1-D arrays over object pixels (part id, u, v, part depth); returns (M, 3) float32.
    Texture follows the canonical frame, so it moves with the object like a real surface."""
    light = 1.0 + look.gradient[oid, 0] * ou + look.gradient[oid, 1] * ov
    light -= look.dome[oid] * (1.0 - np.sqrt(np.minimum(odepth, 1.0)))
    for pid, amp, ku, kv, phase in look.stripes:
        sel = np.flatnonzero(oid == pid)
        if sel.size:
            light[sel] += np.float32(amp) * np.sin(np.float32(ku) * ou[sel] + np.float32(kv) * ov[sel] + np.float32(phase))
    for pid, threshold, darkness in look.pupils:
        sel = np.flatnonzero((oid == pid) & (odepth > threshold))
        light[sel] *= np.float32(darkness)
    return look.base[oid] * light[:, None]


def _background(look: Appearance, size: int, xs: np.ndarray) -> np.ndarray:
    """(S, S, 3) float32: a two-colour linear gradient with clutter shapes drawn on it."""
    c0, c1, angle = look.background
    ramp = np.clip(0.5 + 0.5 * (math.cos(angle) * xs[None, :] + math.sin(angle) * xs[:, None]), 0.0, 1.0)
    image = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * ramp[..., None]
    for shape in look.clutter:
        _draw_shape(image, shape, size, tuple(float(c) for c in shape[4]))
    return image


def _finish(image: np.ndarray, look: Appearance, diff: Difficulty, noise_rng: np.random.Generator,
            xs: np.ndarray) -> np.ndarray:
    """Global lighting, low-frequency colour noise and per-pixel noise (in place), then uint8."""
    size = image.shape[0]
    lx, ly = look.lighting
    lighting = (1.0 + lx * xs[None, :] + ly * xs[:, None]).astype(np.float32)
    noise = _low_frequency_noise(noise_rng, size, 6)
    noise *= np.float32(diff.noise_low)
    noise += 1.0
    noise *= lighting[..., None]
    image *= noise
    grain = noise_rng.standard_normal((size, size, 3), dtype=np.float32)
    grain *= np.float32(diff.noise_high * 255.0)
    image *= 255.0
    image += grain
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    return image.astype(np.uint8)


def sample_instance_map_for(category: TUnion[str, Category], index: int, *, seed: int, difficulty: str) -> InstanceMap:
    """The instance map of image ``index`` (the same one :func:`generate_sample` uses)."""
    cat = get_category(category) if isinstance(category, str) else category
    rng, _ = _rngs(seed, index)
    return sample_instance_map(cat, get_difficulty(difficulty), rng)


# ---------------------------------------------------------------------------------------------
# Keypoints: invert the map
# ---------------------------------------------------------------------------------------------


def invert_map(imap: InstanceMap, targets: np.ndarray, start: np.ndarray, iterations: int = 12,
               tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Newton iterations for ``M(p) = target``.

    Takes ``targets`` (K, 2) canonical points and ``start`` (K, 2) normalised image guesses.
    Returns ``p`` (K, 2) float64 and ``residual`` (K,) = ``|M(p) - target|`` at the returned ``p``.
    """
    p = np.array(start, dtype=np.float64)
    h = 1e-6
    k = len(p)
    for step in range(iterations + 1):
        # One map call per iteration for the points and their two forward-difference neighbours.
        xs = np.concatenate([p[:, 0], p[:, 0] + h, p[:, 0]])
        ys = np.concatenate([p[:, 1], p[:, 1], p[:, 1] + h])
        u, v = imap(xs, ys)
        f = np.stack([u[:k], v[:k]], axis=1) - targets
        if step == iterations or np.all(np.abs(f) < tol):
            break
        j00 = (u[k:2 * k] - u[:k]) / h
        j10 = (v[k:2 * k] - v[:k]) / h
        j01 = (u[2 * k:] - u[:k]) / h
        j11 = (v[2 * k:] - v[:k]) / h
        det = j00 * j11 - j01 * j10
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        p[:, 0] -= np.clip((j11 * f[:, 0] - j01 * f[:, 1]) / det, -0.5, 0.5)
        p[:, 1] -= np.clip((-j10 * f[:, 0] + j00 * f[:, 1]) / det, -0.5, 0.5)
    return p, np.hypot(f[:, 0], f[:, 1])


def locate_keypoints(category: Category, imap: InstanceMap, size: int, ids: np.ndarray,
                     valid: np.ndarray) -> np.ndarray:
    """Image positions of the category's keypoints.

    Takes the instance map, the image size, ``ids`` (S, S) unoccluded part ids and ``valid``
    (S, S). Returns (K, 3) float64: x, y in pixel-index coordinates and COCO visibility
    (2 visible, 1 in the image but covered, 0 outside the image, with x = y = 0).
    """
    targets = category.keypoint_coords
    start = targets @ imap.pose.T + imap.translation
    p, residual = invert_map(imap, targets, start)
    if np.any(residual > 1e-7):
        # Rare: a strongly deformed instance; restart those from the nearest pixel centre.
        xs = pixel_centres(size, np.float64)
        gu, gv = imap.grid(size)
        for i in np.flatnonzero(residual > 1e-7):
            d = (gu - targets[i, 0]) ** 2 + (gv - targets[i, 1]) ** 2
            r, c = np.unravel_index(int(np.argmin(d)), d.shape)
            p_i, res_i = invert_map(imap, targets[i:i + 1], np.array([[xs[c], xs[r]]]), iterations=30)
            p[i], residual[i] = p_i[0], res_i[0]
    out = np.zeros((len(targets), 3))
    pix = (p + 1.0) * (size / 2.0) - 0.5
    for i, (x, y) in enumerate(pix):
        if residual[i] > 1e-6 or not (-0.5 <= x < size - 0.5 and -0.5 <= y < size - 0.5):
            continue  # not in this image: COCO "not labelled" (0, 0, 0)
        col, row = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        out[i] = (x, y, 2.0 if valid[row, col] else 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# Reference: the straightforward per-pixel loop (benchmarks and tests)
# ---------------------------------------------------------------------------------------------


def reference_geometry(category: TUnion[str, Category], index: int, *, size: int, seed: int,
                       difficulty: str = "medium") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel Python loop over the same instance: map, part and flat-shaded object colour.

    Returns ``correspondence`` float32 (2, S, S) (unclipped), ``ids`` uint8 (S, S) (before
    occluders) and ``colour`` float32 (S, S, 3) (object pixels lit as in :func:`generate_sample`,
    without stripes, pupils, background or noise). Slow on purpose: it is the baseline that
    :func:`generate_sample` is checked and timed against.
    """
    cat = get_category(category) if isinstance(category, str) else category
    diff = get_difficulty(difficulty)
    rng, _ = _rngs(seed, index)
    imap = sample_instance_map(cat, diff, rng)
    pose_scale = float(np.sqrt(abs(np.linalg.det(imap.pose))))
    look = sample_appearance(cat, diff, rng, imap.translation, pose_scale)
    corr = np.zeros((2, size, size), np.float32)
    ids = np.zeros((size, size), np.uint8)
    colour = np.zeros((size, size, 3), np.float32)
    xs = pixel_centres(size)
    for i in range(size):
        for j in range(size):
            u, v = imap(xs[j], xs[i])
            u, v = np.float32(u), np.float32(v)
            corr[0, i, j], corr[1, i, j] = u, v
            if abs(u) >= TEMPLATE_EXTENT or abs(v) >= TEMPLATE_EXTENT:
                continue
            pid, depth = render_part_scalar(cat, u, v)
            ids[i, j] = pid
            if pid:
                light = (1.0 + look.gradient[pid, 0] * u + look.gradient[pid, 1] * v
                         - look.dome[pid] * (1.0 - math.sqrt(min(depth, 1.0))))
                colour[i, j] = look.base[pid] * light
    return corr, ids, colour
