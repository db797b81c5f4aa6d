"""Canonical coordinate frame and the coordinate warping MLP (DESIGN §2).

The canonical frame is a grid of (x, y) in [-1, 1]: x across columns, y down rows, endpoints
included (align_corners-style: the first column is x = -1, the last x = +1). The warping
network is a per-pixel MLP of [x, y, w_structure], so a correspondence map can be evaluated on
any grid: a 512×512 map costs only a bigger grid, never an upsampling.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

Size = Union[int, tuple[int, int]]

# Hidden activations per chunk (elements): bounds memory when a big grid is evaluated (autograd path,
# which must keep every layer's activations anyway).
_CHUNK_ELEMENTS = 1 << 24

# Inference path, single-threaded CPU: hidden activations per block (elements; 2 MiB of float32 at
# 1 << 19). The MLP is a chain of (rows, 512) @ (512, 512) GEMMs separated by ReLU passes; a block
# this size stays in cache between the GEMM and its ReLU, whereas a whole 128² grid (32 MiB per
# layer) makes every elementwise pass a trip to main memory (measured: 1.9× faster structure path
# with 1 thread). With several intra-op threads every op ends in a team barrier, and on a shared
# machine a barrier can wait milliseconds for a descheduled thread (measured with 2 threads under
# load: 2048-point blocks 2.7× slower than whole chunks), so there — and on accelerators, where
# launches cost — blocks are as large as the autograd chunks.
_BLOCK_ELEMENTS = 1 << 19


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def canonical_grid(height: int, width: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Canonical coordinates of an H×W grid, row-major: (H*W, 2) with [:, 0] = x, [:, 1] = y.

    x runs from -1 (first column) to +1 (last column), y from -1 (top row) to +1 (bottom row).
    """
    dtype = dtype or torch.float32
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype) if height > 1 else torch.zeros(1, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype) if width > 1 else torch.zeros(1, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def canonical_grid_map(height: int, width: int, device: Optional[torch.device] = None,
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The canonical frame as an image: (1, 2, H, W), channel 0 = x, channel 1 = y."""
    return canonical_grid(height, width, device, dtype).t().reshape(1, 2, height, width)


# The warp MLP's skip adds atanh(SKIP_SCALE · p) before the final tanh, so the untrained map is
# ≈ SKIP_SCALE · p plus a small code-dependent offset: close to the identity, and still where tanh
# has a useful slope (0.19 at the border), so the chamfer loss can spread it to the full square.
SKIP_SCALE = 0.9

# The affine head's bounds: turn (radians), log-scale, log-aspect, shear, x shift, y shift (canonical
# units; the square is 2 wide), and its learning-rate multiplier (as the mapping networks').
AFFINE_BOUNDS = (0.6, 0.4, 0.3, 0.3, 0.4, 0.4)
AFFINE_LR_MUL = 0.1


def _skip_term(points: torch.Tensor) -> torch.Tensor:
    return torch.atanh(SKIP_SCALE * points.clamp(-1.0, 1.0))


class PointMLP(nn.Module):
    """MLP on [point (2), code (D)] per point: Linear(2+D → hidden), ReLU, …, Linear(hidden → 2), tanh.

    ``forward(points (N, 2) shared or (B, N, 2), code (B, D)) -> (B, N, 2)``. The first layer is
    split into a point part (per point) and a code part (once per sample), so no (B, N, 2+D) input
    is ever built; points are processed in chunks to bound memory.
    """

    def __init__(self, latent_dim: int, hidden: int, n_layers: int, skip: bool = False, bound: float = 0.0) -> None:
        super().__init__()
        self.skip = skip
        self.bound = bound  # > 0: the last layer's output is bounded to ±bound (bound · tanh(out / bound))
        if n_layers < 2:
            raise ValueError("the point MLP needs at least 2 linear layers")
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.first = nn.Linear(2 + latent_dim, hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers - 2))
        self.last = nn.Linear(hidden, 2)

    def _run(self, points: torch.Tensor, code_term: torch.Tensor) -> torch.Tensor:
        w_point = self.first.weight[:, :2]
        h = torch.relu(points @ w_point.t() + code_term)
        for layer in self.hidden_layers:
            h = torch.relu(layer(h))
        out = self.last(h)
        if self.bound > 0:
            out = self.bound * torch.tanh(out / self.bound)
        if self.skip:
            out = out + _skip_term(points)
        return torch.tanh(out)

    @torch.no_grad()
    def _run_inference(self, points: torch.Tensor, code_term: torch.Tensor) -> torch.Tensor:
        """No-autograd forward: per sample and per cache-sized block of points, every layer is one
        ``addmm`` (bias fused) writing a fresh block followed by an in-place ReLU; the last layer
        writes straight into the (B, N, 2) output, then tanh in place. Same arithmetic as ``_run``.

        points: (N, 2) shared or (B, N, 2); code_term: (B, hidden) → (B, N, 2).
        """
        b, n = code_term.shape[0], points.shape[-2]
        out = torch.empty(b, n, 2, dtype=code_term.dtype, device=code_term.device)
        if code_term.device.type == "cpu" and torch.get_num_threads() == 1:
            rows = max(256, _BLOCK_ELEMENTS // self.hidden)
        else:
            rows = max(1024, _CHUNK_ELEMENTS // max(1, self.hidden))
        w_point = self.first.weight[:, :2].t()
        layers = [(layer.bias, layer.weight.t()) for layer in self.hidden_layers]
        w_last = self.last.weight.t()
        for i in range(b):
            pts = points[i] if points.ndim == 3 else points
            for start in range(0, n, rows):
                h = torch.addmm(code_term[i], pts[start:start + rows], w_point).relu_()
                for bias, weight in layers:
                    h = torch.addmm(bias, h, weight).relu_()
                block = out[i, start:start + rows]
                torch.addmm(self.last.bias, h, w_last, out=block)
                if self.bound > 0:
                    block.div_(self.bound).tanh_().mul_(self.bound)
                if self.skip:
                    block.add_(_skip_term(pts[start:start + rows]))
        return out.tanh_()

    def forward(self, points: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        if code.ndim != 2 or code.shape[1] != self.latent_dim:
            raise ValueError(f"expected a code of shape (B, {self.latent_dim}), got {tuple(code.shape)}")
        b = code.shape[0]
        points = points.to(code.dtype)
        if not torch.is_grad_enabled() or not (code.requires_grad or points.requires_grad
                                               or any(p.requires_grad for p in self.parameters())):
            code_term = torch.addmm(self.first.bias, code, self.first.weight[:, 2:].t())
            return self._run_inference(points.contiguous(), code_term)
        # Code part of the first layer, once per sample: (B, 1, hidden).
        code_term = (code @ self.first.weight[:, 2:].t() + self.first.bias)[:, None, :]
        n = points.shape[-2]
        chunk = max(1024, _CHUNK_ELEMENTS // max(1, b * self.hidden))
        outs = []
        for start in range(0, n, chunk):
            p = points[..., start:start + chunk, :]
            outs.append(self._run(p if p.ndim == 3 else p[None], code_term))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


class CoordinateWarp(nn.Module):
    """Coordinate warping network: structure w → correspondence map.

    With ``skip`` the MLP predicts an offset from the identity (pre-tanh): the canonical point's
    own atanh(0.9·p) is added before the tanh (and the last bias starts at zero), so an untrained network already draws a smooth map close to the canonical grid — not,
    as a plain MLP of a random code does, nearly one point per image.

    ``code_gain`` multiplies the structure code's weights of the first layer at initialisation
    (only): maps of different codes start that much further apart.

    ``affine`` adds a global affine head: the MLP sees each grid point moved by the code's own
    pose M·p + t (turn, scale, stretch, shear, shift: six bounded numbers from one linear layer of
    w, spread about ``affine_init`` at initialisation; see ``pose``), so pose is one cheap factor of
    the structure code. ``residual`` > 0 bounds what the MLP adds to the (moved) point, before the
    final tanh, to ±``residual``: the map stays a bent copy of the grid and cannot fold into a corner.

    ``forward(w_structure (B, D), size=int|(H, W)) -> (B, 2, H, W)`` in [-1, 1] (tanh output):
    for each canonical grid position, the canonical coordinate of the semantic point drawn there.
    ``warp_points(w (B, D), points (N, 2)) -> (B, N, 2)`` evaluates arbitrary positions.
    """

    def __init__(self, latent_dim: int, hidden: int = 512, n_layers: int = 3, skip: bool = False,
                 code_gain: float = 1.0, affine: bool = False, affine_init: float = 0.05,
                 residual: float = 0.0) -> None:
        super().__init__()
        self.mlp = PointMLP(latent_dim, hidden, n_layers, skip=skip, bound=residual)
        # Global affine head: the structure code turns, scales, stretches, shears and shifts the
        # whole grid before the MLP bends it, so a pose change is six numbers rather than a learnt
        # field. Each number is bounded (tanh) and learns at AFFINE_LR_MUL of the rate, so the
        # adversarial game cannot fold the grid (unbounded, head and MLP sheared it flat in 700 steps).
        self.affine = nn.Linear(latent_dim, 6) if affine else None
        with torch.no_grad():
            if skip:
                self.mlp.last.bias.zero_()
            # code_gain scales how much the untrained map depends on the structure code.
            self.mlp.first.weight[:, 2:].mul_(code_gain)
            if self.affine is not None:
                # Each parameter starts with a spread of about ``affine_init`` across unit-variance
                # codes (in its own units: radians, log-scale, shift), and code 0 draws the identity.
                self.affine.weight.normal_(0.0, affine_init / latent_dim ** 0.5 / AFFINE_LR_MUL)
                self.affine.bias.zero_()

    def pose(self, w_structure: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine head's (M (B, 2, 2), t (B, 2)): a grid point p moves to M·p + t, with
        M = rotation(θ) · diag(e^(s+a), e^(s-a)) · [[1, h], [0, 1]] and (θ, s, a, h, t) each bounded
        by ``AFFINE_BOUNDS`` (tanh). Requires the head (``affine=True``)."""
        if self.affine is None:
            raise RuntimeError("this warp has no affine head (model.warp_affine = false)")
        bounds = torch.tensor(AFFINE_BOUNDS, dtype=w_structure.dtype, device=w_structure.device)
        p = bounds * torch.tanh(self.affine(w_structure) * AFFINE_LR_MUL / bounds)
        theta, log_scale, log_aspect, shear = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        cos, sin = torch.cos(theta), torch.sin(theta)
        sx, sy = torch.exp(log_scale + log_aspect), torch.exp(log_scale - log_aspect)
        # rotation @ diag(sx, sy) @ [[1, shear], [0, 1]], written out.
        m = torch.stack([torch.stack([cos * sx, cos * sx * shear - sin * sy], -1),
                         torch.stack([sin * sx, sin * sx * shear + cos * sy], -1)], -2)
        return m, p[:, 4:]

    def affine_points(self, w_structure: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Points (N, 2) → (B, N, 2) moved by each code's pose M·p + t (``pose``); without the
        affine head the points unchanged."""
        if self.affine is None:
            return points
        m, t = self.pose(w_structure)
        return points.to(m.dtype) @ m.transpose(1, 2) + t[:, None, :]

    def warp_points(self, w_structure: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.affine_points(w_structure, points), w_structure)

    def forward(self, w_structure: torch.Tensor, size: Size) -> torch.Tensor:
        h, w = _hw(size)
        grid = canonical_grid(h, w, device=w_structure.device, dtype=w_structure.dtype)
        out = self.warp_points(w_structure, grid)  # (B, H*W, 2)
        return out.transpose(1, 2).reshape(w_structure.shape[0], 2, h, w)


class BackwardMLP(nn.Module):
    """CoordGAN-B's backward MLP: warped coordinates (+ structure w) → canonical coordinates.

    ``forward(correspondence_map (B, 2, H, W), w_structure (B, D)) -> (B, 2, H, W)``; trained with an
    L1 loss against the canonical grid.
    """

    def __init__(self, latent_dim: int, hidden: int = 512, n_layers: int = 3) -> None:
        super().__init__()
        self.mlp = PointMLP(latent_dim, hidden, n_layers)

    def forward(self, correspondence_map: torch.Tensor, w_structure: torch.Tensor) -> torch.Tensor:
        b, _, h, w = correspondence_map.shape
        points = correspondence_map.reshape(b, 2, h * w).transpose(1, 2)
        return self.mlp(points, w_structure).transpose(1, 2).reshape(b, 2, h, w)
