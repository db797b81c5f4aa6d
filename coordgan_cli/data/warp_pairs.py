"""Pairs with exact correspondence from an unlabelled image folder: each image and a warped copy.

View A is an image of the folder (resized to a square ``size``); view B samples A at a random
smooth map T: B(p) = A(T(p)) (bilinear), where T is a random homography (the corners of the frame
moved by up to ``warp`` of the half-side, with a random zoom) plus an elastic displacement (a
random 4×4 field of up to ``elastic`` half-sides, bilinearly upsampled), then a per-channel colour
jitter of B. Coordinates are normalised: x, y ∈ [-1, 1] across the frame, pixel centres at the
ends (``align_corners=True``), so pixel (i, j) of an S-wide frame is at 2·j/(S-1) - 1.

The pair follows the ``training.matcher.ImagePair`` convention: coords_a is A's own pixel grid,
coords_b = T (the A position every pixel of B shows), valid_b marks the B pixels whose source lies
inside A. Pixels with equal coordinates are then the same scene point, exactly.
Everything is drawn from the caller's ``torch.Generator``: a pair is a function of (folder, seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.errors import UserError


def identity_grid(size: int) -> torch.Tensor:
    """(size, size, 2) normalised (x, y) of every pixel centre, align_corners=True."""
    t = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x, y], dim=-1)


def homography_from_corners(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3×3 H (H[2,2] = 1) mapping the 4 points ``src`` (4, 2) onto ``dst`` (4, 2)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(h: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """(..., 2) float64 points → H·points (dehomogenised)."""
    hom = torch.from_numpy(h)
    xyz = points @ hom[:, :2].t() + hom[:, 2]
    return xyz[..., :2] / xyz[..., 2:]


def random_warp(generator: torch.Generator, size: int, warp: float, elastic: float) -> torch.Tensor:
    """A random smooth map T as a (size, size, 2) float64 grid of normalised A positions.

    Homography: the corners of B go to zoom·corner + U(-warp, warp) per coordinate, zoom ∈
    [1 - warp, 1] (so B mostly sees the inside of A). Elastic: a (2, 4, 4) field U(-elastic,
    elastic), bilinearly upsampled (align_corners=True) and added.
    """
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    zoom = 1.0 - warp * float(torch.rand((), generator=generator, dtype=torch.float64))
    moved = zoom * corners + warp * (2 * torch.rand(4, 2, generator=generator, dtype=torch.float64).numpy() - 1)
    grid = apply_homography(homography_from_corners(corners, moved), identity_grid(size))
    field = elastic * (2 * torch.rand(1, 2, 4, 4, generator=generator, dtype=torch.float64) - 1)
    if elastic > 0:
        grid = grid + F.interpolate(field, size=(size, size), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)
    return grid


def warp_image(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """B(p) = A(grid(p)): image (C, H, W) float, grid (h, w, 2) normalised (x, y) → (C, h, w),
    bilinear, zeros outside A."""
    return F.grid_sample(image[None].double(), grid[None].double(), mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0].to(image.dtype)


def colour_jitter(image: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Per-channel gain 1 ± amount and shift ± amount of an image in [-1, 1] (clamped)."""
    gain = 1.0 + amount * (2 * torch.rand(3, 1, 1, generator=generator) - 1)
    shift = amount * (2 * torch.rand(3, 1, 1, generator=generator) - 1)
    return (image * gain + shift).clamp(-1, 1)


class WarpPairSource:
    """Self-supervised pairs from a folder of unlabelled images (see the module doc).

    All images are read once, resized to ``size``² (the working frame is square, as the
    pretrained matchers' is) and kept in memory as uint8.
    """

    def __init__(self, folder: str | Path, size: int = 256, *, warp: float = 0.15, elastic: float = 0.03,
                 jitter: float = 0.2) -> None:
        from coordgan_cli.correspondence.hypercolumns import resize_image
        from coordgan_cli.io.images import list_images, read_image

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"--data {self.folder}: not a folder")
        self.paths = list_images(self.folder)
        if not self.paths:
            raise UserError(f"--data {self.folder}: no images found (in subfolders either)")
        self.size = (int(size), int(size))
        self.warp, self.elastic, self.jitter = float(warp), float(elastic), float(jitter)
        self.images = [resize_image(read_image(p), int(size)) for p in self.paths]

    def __len__(self) -> int:
        return len(self.images)

    def view_a(self, index: int) -> torch.Tensor:
        """Image ``index`` as a (3, S, S) float tensor in [-1, 1] (view A, never jittered)."""
        return torch.from_numpy(self.images[index]).permute(2, 0, 1).float() / 127.5 - 1.0

    def sample_indexed(self, generator: torch.Generator, count: int) -> list[tuple[int, "ImagePair"]]:
        """``count`` (image index, pair) draws; the index lets a caller cache view A's features."""
        from coordgan_cli.training.matcher import ImagePair

        out = []
        side = self.size[0]
        coords_a = identity_grid(side).permute(2, 0, 1).float()
        for _ in range(count):
            i = int(torch.randint(len(self.images), (1,), generator=generator))
            grid = random_warp(generator, side, self.warp, self.elastic)
            image_a = self.view_a(i)
            image_b = warp_image(image_a, grid)
            if self.jitter > 0:
                image_b = colour_jitter(image_b, self.jitter, generator)
            valid_b = (grid.abs() <= 1.0).all(dim=-1)
            out.append((i, ImagePair(image_a, coords_a, None, image_b, grid.permute(2, 0, 1).float(), valid_b)))
        return out

    def sample(self, generator: torch.Generator, count: int) -> list:
        return [pair for _, pair in self.sample_indexed(generator, count)]

    def describe(self) -> dict:
        return {"kind": "warps", "data": str(self.folder), "images": len(self.images), "size": list(self.size),
                "warp": self.warp, "elastic": self.elastic, "jitter": self.jitter}


def grid_coordinates(coords: torch.Tensor, valid: Optional[torch.Tensor],
                     grid: tuple[int, int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-pixel (2, H, W) coordinates and (H, W) validity → the same at the centres of a coarser
    (h, w) feature grid (bilinear, align_corners=False: a cell takes its centre's coordinate; a
    cell is valid when all its pixels are)."""
    c = F.interpolate(coords[None].float(), size=grid, mode="bilinear", align_corners=False)[0]
    if valid is None:
        return c, None
    v = F.interpolate(valid[None, None].float(), size=grid, mode="area")[0, 0] > 0.999
    return c, v
