"""The one inference API: real images → correspondence maps, codes, reconstructions, features.

Every command that needs maps from a model (``invert``, ``propagate``, ``evaluate``, ``swap``) goes
through :func:`load_correspondence_model`, which returns a :class:`CorrespondenceModel`.

Checkpoints it reads (``io.checkpoint`` format):

- an **encoder checkpoint** (``kind = "encoder"``, written by ``coordgan train-encoder``) is
  self-contained: ``networks["encoder"]`` plus ``networks["generator"]``, the frozen EMA generator
  the encoder was trained against, and ``extra["generator_sha256"]``, the SHA-256 of that
  generator's checkpoint file. One file gives maps, codes and reconstructions; the recorded hash
  makes pairing an encoder with another generator a clear error (:func:`check_generator_pairing`).
- a **generator checkpoint** (``kind = "generator"``, from ``train`` / ``finetune``) gives only
  sampled images and their maps (no encoder): pass ``allow_generator_only=True``.

Aspect handling: every image is resized (bilinear, antialiased) to the encoder's square input
size with **no crop**, so the whole image is seen and the correspondence map on an H×W grid
lines up pixel for pixel with the original H×W image (the canonical grid is stretched with the
image). Non-square images are therefore squashed before encoding; the model was trained on
square crops, so very elongated images give less reliable maps.

The structure path (``correspondence_maps``) runs only the encoder trunk, its structure head
and the warp MLP — never the generator's synthesis network — so it is cheap, and since the warp
MLP is continuous the map can be evaluated on any grid size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.config import Recipe
from coordgan_cli.errors import UserError
from coordgan_cli.io.checkpoint import checkpoint_recipe, file_sha256, load_checkpoint, load_state_strict
from coordgan_cli.models import Encoder, Generator, encoder_kwargs, generator_kwargs

# The package's own shipped models; COORDGAN_SHIPPED_DIR (read at every call) points elsewhere.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_DIR_ENV = "COORDGAN_SHIPPED_DIR"
DEFAULT_BATCH = 16

Size = tuple[int, int]


def shipped_dir() -> Path:
    """The folder of shipped models: ``$COORDGAN_SHIPPED_DIR`` if set (and not empty), else ``SHIPPED_DIR``."""
    override = os.environ.get(SHIPPED_DIR_ENV)
    return Path(override) if override else SHIPPED_DIR


def shipped_models() -> list[str]:
    """Names of the models shipped as ``<shipped dir>/<name>.pt`` (CoordGAN models and matchers)."""
    folder = shipped_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pt"))


def resolve_checkpoint(ckpt_path: str | os.PathLike | None, model_name: str | None = None) -> Path:
    """A checkpoint path from an explicit path or a shipped model name (exactly one of them)."""
    if ckpt_path is not None and model_name is not None:
        raise UserError("give either a checkpoint path (--ckpt / CKPT) or a shipped model (--model NAME), not both")
    if ckpt_path is not None:
        return Path(ckpt_path)
    if model_name is None:
        raise UserError("no model given: pass a checkpoint path (or the name of a shipped model)")
    path = shipped_dir() / f"{model_name}.pt"
    if not path.is_file():
        names = shipped_models()
        have = f"shipped models: {', '.join(names)}" if names else "this build ships no models"
        raise UserError(f"model {model_name!r} is not shipped ({have}); pass a checkpoint path instead")
    return path


# The CoordGAN model (an encoder checkpoint embedding its generator) that `propagate`, `invert`,
# `swap`, `evaluate` and `demo` use when given neither a checkpoint nor --model, once it ships as
# <shipped dir>/<DEFAULT_MODEL>.pt.
DEFAULT_MODEL = "faces"

NO_MODEL = ("no model: pass --ckpt CKPT (an encoder checkpoint) or --model NAME; "
            "this build ships no CoordGAN model")


def resolve_model(ckpt_path: str | os.PathLike | None, model_name: str | None = None) -> Path:
    """A CoordGAN checkpoint path: the explicit path, else the named shipped model, else the shipped
    default model (``DEFAULT_MODEL``) if its file exists; UserError (``NO_MODEL``) when none applies.
    Both a path and a name is a UserError."""
    if ckpt_path is not None or model_name is not None:
        return resolve_checkpoint(ckpt_path, model_name)
    default = shipped_dir() / f"{DEFAULT_MODEL}.pt"
    if default.is_file():
        return default
    raise UserError(NO_MODEL)


def is_default_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the shipped default model (for an info line naming it)."""
    return Path(path) == shipped_dir() / f"{DEFAULT_MODEL}.pt"


# The matcher `propagate --matcher correlation|ensemble` uses when no --matcher-ckpt is given, once
# one ships as <shipped dir>/<DEFAULT_MATCHER>.pt (a `coordgan train-matcher` checkpoint).
DEFAULT_MATCHER = "synthetic-matcher"


def resolve_matcher(ckpt_path: str | os.PathLike | None, model_name: str | None = None) -> Path:
    """A matcher checkpoint path: the explicit path, else the named shipped model, else the shipped
    default matcher (``DEFAULT_MATCHER``); UserError saying to pass --matcher-ckpt when none applies."""
    if ckpt_path is not None or model_name is not None:
        return resolve_checkpoint(ckpt_path, model_name)
    default = shipped_dir() / f"{DEFAULT_MATCHER}.pt"
    if default.is_file():
        return default
    raise UserError("no feature matcher: pass --matcher-ckpt M.pt (the latest.pt of `coordgan train-matcher`); "
                    "this build ships no matcher")


def generator_state(data: Mapping[str, Any], path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The generator weights to use from a loaded checkpoint: the EMA copy when there is one."""
    ema = data.get("ema") or {}
    if "generator" in ema:
        return ema["generator"]
    if "generator" in data["networks"]:
        return data["networks"]["generator"]
    raise UserError(f"{path}: checkpoint holds no generator weights (networks: {', '.join(data['networks']) or 'none'})")


def build_generator(recipe: Recipe, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    device: torch.device) -> Generator:
    """A frozen eval-mode generator of ``recipe.model`` with ``state`` loaded, on ``device``."""
    generator = Generator(**generator_kwargs(recipe.model))
    load_state_strict(generator, state, "generator", path)
    return generator.to(device).eval().requires_grad_(False)


def build_encoder(recipe: Recipe, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  device: torch.device) -> Encoder:
    encoder = Encoder(**encoder_kwargs(recipe.model))
    load_state_strict(encoder, state, "encoder", path)
    return encoder.to(device).eval().requires_grad_(False)


def check_generator_pairing(encoder_data: Mapping[str, Any], generator_sha256: str, encoder_path: str | os.PathLike,
                            generator_path: str | os.PathLike) -> None:
    """UserError unless the encoder checkpoint was trained against the generator file with this hash."""
    recorded = (encoder_data.get("extra") or {}).get("generator_sha256")
    if recorded != generator_sha256:
        raise UserError(
            f"{encoder_path}: this encoder was trained against the generator checkpoint with sha256 "
            f"{str(recorded)[:12]}…, but {generator_path} has sha256 {generator_sha256[:12]}…; an encoder only works "
            "with its own generator: train a new encoder for this generator (coordgan train-encoder) or use the right file"
        )


def encoder_checkpoint_payload(recipe: Recipe, encoder_state: Mapping[str, torch.Tensor],
                               generator_state: Mapping[str, torch.Tensor], generator_sha256: str, step: int,
                               *, generator_step: int | None = None, optimizers: Mapping[str, Any] | None = None,
                               rng: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """The dict ``save_checkpoint`` writes for an encoder (the layout this module reads back).

    ``generator_state``: the frozen (EMA) generator weights the encoder was trained against;
    ``generator_sha256``: the SHA-256 of that generator's checkpoint file.
    """
    payload: dict[str, Any] = {
        "kind": "encoder", "step": int(step), "config": recipe.to_json(),
        "networks": {"encoder": dict(encoder_state), "generator": dict(generator_state)},
        "extra": {**(extra or {}), "generator_sha256": generator_sha256,
                  "generator_step": None if generator_step is None else int(generator_step)},
    }
    if optimizers is not None:
        payload["optimizers"] = dict(optimizers)
    if rng is not None:
        payload["rng"] = dict(rng)
    return payload


def images_to_tensor(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) RGB arrays → (B, 3, size, size) float in [-1, 1] on ``device``.

    Each image is resized on its own (bilinear, antialiased, no crop: the aspect ratio is not
    kept, the whole image is seen), so a batch may mix sizes.
    """
    out = []
    for k, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {k}: expected a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(2, 0, 1)[None].float()
        x = x / 127.5 - 1.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x)
    if not out:
        return torch.empty(0, 3, size, size, device=device)
    return torch.cat(out, 0)


def tensor_to_images(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in about [-1, 1] → list of uint8 (H, W, 3)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a for a in x.permute(0, 2, 3, 1).cpu().numpy()]


def colourise_correspondence(correspondence_map: np.ndarray) -> np.ndarray:
    """(2, H, W) canonical (x, y) in [-1, 1] → uint8 (H, W, 3): x → red, y → green, blue 0.

    Equal colours in two maps are the same semantic point; nothing is masked.
    """
    c = np.clip((np.asarray(correspondence_map, dtype=np.float32) + 1.0) * 127.5, 0, 255)
    h, w = c.shape[-2:]
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[..., 0] = np.round(c[0]).astype(np.uint8)
    rgb[..., 1] = np.round(c[1]).astype(np.uint8)
    return rgb


def _batches(n: int, batch_size: int) -> Iterable[range]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield range(start, min(n, start + batch_size))


@dataclass
class CorrespondenceModel:
    """An encoder (optional) with the generator it belongs to, frozen, on one device.

    Attributes: ``generator`` (eval, frozen), ``encoder`` (None for a generator-only checkpoint),
    ``recipe`` (the checkpoint's resolved config), ``checkpoint_path``, ``checkpoint_sha256`` (of the
    file loaded), ``generator_sha256`` (of the generator's own checkpoint file), ``kind``
    ("encoder" | "generator"), ``device``.
    """

    generator: Generator
    encoder: Optional[Encoder]
    recipe: Recipe
    checkpoint_path: Path
    checkpoint_sha256: str
    generator_sha256: Optional[str]
    kind: str
    device: torch.device

    @property
    def input_size(self) -> int:
        """Side of the square the images are resized to before encoding."""
        return self.encoder.size if self.encoder is not None else self.generator.coord_size

    @property
    def map_size(self) -> int:
        """Default correspondence-map side: the canonical grid of the generator."""
        return self.generator.coord_size

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    def _need_encoder(self) -> Encoder:
        if self.encoder is None:
            raise UserError(f"{self.checkpoint_path}: a generator checkpoint has no encoder; real images need an "
                            "encoder checkpoint (train one with: coordgan train-encoder GAN_CKPT RECIPE --out RUN)")
        return self.encoder

    def _tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return images_to_tensor(images, self.input_size, self.device)

    # ---- the structure path -------------------------------------------------------------
    @torch.inference_mode()
    def structure_codes(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Structure w (B, D) of one batch of uint8 images (encoder trunk + structure head)."""
        return self._need_encoder().encode_structure(self._tensor(images))

    @torch.inference_mode()
    def maps_from_codes(self, w_structure: torch.Tensor, sizes: Sequence[Size]) -> list[np.ndarray]:
        """Warp MLP on each requested grid: (B, D) codes, B sizes (H, W) → B float32 (2, H, W)."""
        out: list[Optional[np.ndarray]] = [None] * w_structure.shape[0]
        groups: dict[Size, list[int]] = {}
        for i, s in enumerate(sizes):
            groups.setdefault((int(s[0]), int(s[1])), []).append(i)
        for size, idx in groups.items():
            maps = self.generator.correspondence(w_structure[idx], size).float().cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = maps[j]
        return out  # type: ignore[return-value]

    def correspondence_maps(self, images: Sequence[np.ndarray], sizes: Optional[Sequence[Size]] = None,
                            batch_size: int = DEFAULT_BATCH) -> list[np.ndarray]:
        """Correspondence maps of real images by the structure path only.

        ``images``: uint8 (H, W, 3) RGB arrays (any sizes; resized to the input size, no crop).
        ``sizes``: the (H, W) grid of each map; None gives every map at the model's canonical
        size (coord_size²). Pass each image's own (H, W) for maps aligned with the full-resolution
        image. Returns float32 (2, H, W) arrays, channel 0 = canonical x, 1 = canonical y, in [-1, 1].
        """
        if sizes is not None and len(sizes) != len(images):
            raise ValueError(f"{len(sizes)} sizes for {len(images)} images")
        grid = [(self.map_size, self.map_size)] * len(images) if sizes is None else list(sizes)
        maps: list[np.ndarray] = []
        for r in _batches(len(images), batch_size):
            codes = self.structure_codes([images[i] for i in r])
            maps.extend(self.maps_from_codes(codes, [grid[i] for i in r]))
        return maps

    # ---- codes, reconstructions, features ---------------------------------------------------
    @torch.inference_mode()
    def encode_tensor(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch → (w_structure (B, D), w_texture_plus (B, n_latent, D)) tensors on the device."""
        return self._need_encoder()(self._tensor(images))

    def encode(self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images → (structure codes float32 (N, D), texture codes float32 (N, n_latent, D))."""
        ws, wt = [], []
        for r in _batches(len(images), batch_size):
            s, t = self.encode_tensor([images[i] for i in r])
            ws.append(s.float().cpu().numpy())
            wt.append(t.float().cpu().numpy())
        if not ws:
            return np.zeros((0, self.latent_dim), np.float32), np.zeros((0, self.n_latent, self.latent_dim), np.float32)
        return np.concatenate(ws), np.concatenate(wt)

    @torch.inference_mode()
    def synthesize(self, w_structure: torch.Tensor, w_texture_plus: torch.Tensor) -> torch.Tensor:
        """Generator synthesis with constant noise (deterministic): (B, D), (B, L, D) → (B, 3, size, size)."""
        corr = self.generator.correspondence(w_structure)
        return self.generator.synthesize(corr, w_texture_plus, noise="const")

    def reconstruct(self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH) -> list[np.ndarray]:
        """Full path (encoder + generator synthesis, constant noise): uint8 (size, size, 3) reconstructions."""
        out: list[np.ndarray] = []
        for r in _batches(len(images), batch_size):
            s, t = self.encode_tensor([images[i] for i in r])
            out.extend(tensor_to_images(self.synthesize(s, t)))
        return out

    @torch.inference_mode()
    def features(self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH) -> list[np.ndarray]:
        """Encoder trunk features, float32 (C, h, w) per image (h = w = input_size / 2^blocks).

        For feature-matching baselines (cosine nearest neighbour): the features are what the
        structure head reads, before any code is formed.
        """
        enc = self._need_encoder()
        out: list[np.ndarray] = []
        for r in _batches(len(images), batch_size):
            f = enc.trunk_features(self._tensor([images[i] for i in r])).float().cpu().numpy()
            out.extend(f)
        return out

    # ---- sampled codes ------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_codes(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``seed:N`` sources: z_structure then z_texture drawn from ``torch.Generator().manual_seed(N)``
        (CPU, so the same seed gives the same codes on any device), mapped to (w_s (1, D), W+ (1, L, D))."""
        gen = torch.Generator().manual_seed(int(seed))
        z_s = torch.randn(1, self.latent_dim, generator=gen)
        z_t = torch.randn(1, self.latent_dim, generator=gen)
        w_s = self.generator.map_structure(z_s.to(self.device))
        w_t = self.generator.map_texture(z_t.to(self.device))
        return w_s, self.generator.texture_plus(w_t)


def load_correspondence_model(ckpt_path: str | os.PathLike | None, device: torch.device | str = "cpu",
                              model_name: str | None = None, *, allow_generator_only: bool = False
                              ) -> CorrespondenceModel:
    """Load an encoder checkpoint (or a shipped model by ``model_name``) as a :class:`CorrespondenceModel`.

    With ``allow_generator_only`` a generator checkpoint is accepted too (sampling only: every
    method that needs real images then raises a UserError). Every problem with the file is a
    UserError naming it.
    """
    path = resolve_checkpoint(ckpt_path, model_name)
    device = torch.device(device)
    data = load_checkpoint(path)
    recipe = checkpoint_recipe(data, path)
    kind = data["kind"]
    sha = file_sha256(path)
    if kind == "encoder":
        if "encoder" not in data["networks"]:
            raise UserError(f"{path}: encoder checkpoint without encoder weights (damaged file?)")
        gen_sha = (data.get("extra") or {}).get("generator_sha256")
        if not gen_sha:
            raise UserError(f"{path}: encoder checkpoint does not record its generator's sha256 (damaged file?)")
        generator = build_generator(recipe, generator_state(data, path), path, device)
        encoder = build_encoder(recipe, data["networks"]["encoder"], path, device)
        return CorrespondenceModel(generator, encoder, recipe, path, sha, gen_sha, kind, device)
    if kind == "generator":
        if not allow_generator_only:
            raise UserError(f"{path}: is a generator checkpoint; correspondence maps of real images need an encoder "
                            "checkpoint (train one with: coordgan train-encoder GAN_CKPT RECIPE --out RUN)")
        generator = build_generator(recipe, generator_state(data, path), path, device)
        return CorrespondenceModel(generator, None, recipe, path, sha, sha, kind, device)
    raise UserError(f"{path}: is a {kind!r} checkpoint, not an encoder or generator checkpoint")
