"""Training the correlation matcher with the marginal contrastive loss (DESIGN §6).

Supervision is free: pairs of images whose pixels carry canonical coordinates — a ``synth``
ground-truth store, or two samples of a trained CoordGAN (different structure codes; their
correspondence maps give every pixel its canonical coordinate). Pixels with equal canonical
coordinates are positives; the other sampled positions (and a few background pixels) are
negatives.

Run directory (same layout as the other stages): ``config.json`` (resolved recipe, pair
source, seed), ``metrics.jsonl`` (one JSON object per logged step), ``latest.pt`` (checkpoint
``kind="matcher"``). Rerunning with the same ``--out`` resumes from ``latest.pt`` exactly: all
randomness of step ``s`` comes from a generator seeded with (seed, s), so a resumed run draws
what an uninterrupted one would have.

Multi-process (``torchrun --nproc_per_node=N -m coordgan_cli train-matcher ...``): every process
draws the same pairs and random numbers, computes the features and losses of its share of the
pairs and the gradients are summed, so a step equals one process's on the same batch; rank 0
alone writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.config import MatcherConfig, Recipe, recipe_from_json
from coordgan_cli.correspondence.contrastive import marginal_contrastive_loss, sample_positive_pairs
from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_write_json
from coordgan_cli.io.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from coordgan_cli.io.paths import output_folder, remove_stale_temporaries
from coordgan_cli.models.matcher import FeatureMatcher
from coordgan_cli.training import distributed
from coordgan_cli.training.run_dir import RunDir

# Fields of [matcher] that may change between a run and its resumption (the length of the run,
# and work_size, which only matters when the trained matcher is used).
_RESUMABLE_CHANGES = ("steps", "work_size")


@dataclasses.dataclass
class ImagePair:
    """Two images with per-pixel canonical coordinates.

    image_*: float (3, H, W) in [-1, 1]; coords_*: float (2, H, W) canonical (x, y);
    valid_*: bool (H, W) pixels whose coordinate is meaningful (None = all).
    """

    image_a: torch.Tensor
    coords_a: torch.Tensor
    valid_a: Optional[torch.Tensor]
    image_b: torch.Tensor
    coords_b: torch.Tensor
    valid_b: Optional[torch.Tensor]


class PairSource(Protocol):
    size: tuple[int, int]

    def sample(self, generator: torch.Generator, count: int) -> list[ImagePair]: ...

    def describe(self) -> dict: ...


def build_matcher(cfg: MatcherConfig) -> FeatureMatcher:
    """The ``FeatureMatcher`` of a ``[matcher]`` section (built on the current default device)."""
    return FeatureMatcher(in_channels=3, width=cfg.width, depth=cfg.depth, out_channels=cfg.channels,
                          projection=cfg.projection)


def load_matcher(path: str | Path, device: torch.device | str = "cpu") -> tuple[FeatureMatcher, MatcherConfig]:
    """A trained matcher from a ``kind="matcher"`` checkpoint, in eval mode on ``device``, and its config
    (``tau``, ``k``, ``patch`` are the settings to correlate with)."""
    data = load_checkpoint(path)
    if data["kind"] != "matcher":
        raise UserError(f"{path}: a {data['kind']!r} checkpoint, not a matcher (train one with `coordgan train-matcher`)")
    if "matcher" not in data["networks"] and "head" in data["networks"]:
        raise UserError(f"{path}: a projection head (train-matcher --data) for the pretrained-feature matchers; "
                        "use it with --matcher features --matcher-ckpt")
    recipe = recipe_from_json(data["config"], source=f"{path} (stored config)")
    matcher = build_matcher(recipe.matcher)
    load_state_strict(matcher, data["networks"]["matcher"], "matcher", path)
    return matcher.to(device).eval(), recipe.matcher


def matcher_work_size(path: str | Path, cfg: MatcherConfig, requested: Optional[int] = None) -> Optional[int]:
    """The shorter side (px) at which to run a trained matcher: ``requested`` (``--work-size``;
    0 = each image's own size), else the recipe's ``matcher.work_size``, else the size its
    training pairs had (the checkpoint's pair source). None = the images' own sizes (a checkpoint
    that records no training size)."""
    if requested is not None:
        if requested < 0:
            raise UserError(f"--work-size must be a positive number of pixels (or 0 for each image's own size), "
                            f"got {requested}")
        return requested or None
    if cfg.work_size:
        return cfg.work_size
    size = (load_checkpoint(path).get("extra") or {}).get("source", {}).get("size")
    return int(min(size)) if size else None


# --- pair sources ---------------------------------------------------------------------------

def _to_image_tensor(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    import cv2

    if image.shape[:2] != size:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0


class StorePairSource:
    """Pairs of rows of a ground-truth correspondence store (``coordgan synth``).

    ``store``: the HDF5 store (rows named by image path relative to ``images``); ``images``: the
    image folder (default: ``images/`` beside the store). Images whose size differs from the maps are resized to the map size (the maps
    are the supervision grid). Rows are read on demand.
    """

    def __init__(self, store: str | Path, images: str | Path | None = None) -> None:
        from coordgan_cli.io.store import StoreReader

        self.store_path = Path(store)
        self.images_dir = Path(images) if images is not None else self.store_path.parent / "images"
        if not self.images_dir.is_dir():
            if images is None:
                raise UserError(f"{self.store_path}: no images/ folder beside the store (looked for {self.images_dir}); "
                                "give the store's image folder with --images DIR")
            raise UserError(f"--images {self.images_dir}: not a folder")
        self.reader = StoreReader(self.store_path)
        self.names = list(self.reader.names)
        if len(self.names) < 2:
            raise UserError(f"{self.store_path}: needs at least 2 complete rows to make pairs, has {len(self.names)}")
        missing = [n for n in self.names if not (self.images_dir / n).is_file()]
        if missing:
            raise UserError(f"--images {self.images_dir}: no image for store row {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + f"; expected {self.images_dir / missing[0]}")
        self.size = tuple(int(v) for v in self.reader.size)
        self.has_valid = self.reader.has("valid")

    def _row(self, i: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        from coordgan_cli.io.images import read_image

        image = _to_image_tensor(read_image(self.images_dir / self.names[i]), self.size)
        coords = torch.from_numpy(np.asarray(self.reader.correspondence(i), np.float32))
        valid = self.reader.valid(i) if self.has_valid else None
        return image, coords, None if valid is None else torch.from_numpy(np.asarray(valid, bool))

    def sample(self, generator: torch.Generator, count: int) -> list[ImagePair]:
        pairs = []
        n = len(self.names)
        for _ in range(count):
            i = int(torch.randint(n, (1,), generator=generator))
            j = int(torch.randint(n - 1, (1,), generator=generator))
            j += j >= i  # a different row
            pairs.append(ImagePair(*self._row(i), *self._row(j)))
        return pairs

    def describe(self) -> dict:
        return {"kind": "store", "store": str(self.store_path), "images": str(self.images_dir),
                "rows": len(self.names), "size": list(self.size)}


class GanPairSource:
    """Pairs of CoordGAN samples with different structure and texture codes.

    Each pixel's canonical coordinate is the generator's correspondence map (resized to the image
    size when the generator upsamples past its canonical grid). Noise is the generator's constant
    noise, so a pair depends only on the codes drawn from the step's generator.
    """

    def __init__(self, checkpoint: str | Path, device: torch.device) -> None:
        from coordgan_cli.io.checkpoint import checkpoint_recipe
        from coordgan_cli.models import Generator, generator_kwargs

        data = load_checkpoint(checkpoint)
        if data["kind"] not in ("generator", "encoder") or "generator" not in data["networks"]:
            raise UserError(f"--gan {checkpoint}: a {data['kind']!r} checkpoint without a generator "
                            "(give a checkpoint written by `coordgan train`)")
        cfg = checkpoint_recipe(data, checkpoint).model
        self.generator = Generator(**generator_kwargs(cfg))
        state = data.get("ema", {}).get("generator") or data["networks"]["generator"]
        load_state_strict(self.generator, state, "generator", checkpoint)
        self.generator.to(device).eval().requires_grad_(False)
        self.device = device
        self.latent_dim = cfg.latent_dim
        self.size = (cfg.size, cfg.size)
        self.checkpoint = Path(checkpoint)

    @torch.no_grad()
    def sample(self, generator: torch.Generator, count: int) -> list[ImagePair]:
        z = torch.randn(4, count, self.latent_dim, generator=generator).to(self.device)
        z_structure = torch.cat([z[0], z[1]])
        z_texture = torch.cat([z[2], z[3]])
        images, corr = self.generator(z_structure, z_texture, noise="const")
        if corr.shape[-2:] != images.shape[-2:]:
            corr = F.interpolate(corr, size=images.shape[-2:], mode="bilinear", align_corners=False)
        images, corr = images.clamp(-1, 1).cpu(), corr.cpu()
        return [ImagePair(images[p], corr[p], None, images[count + p], corr[count + p], None) for p in range(count)]

    def describe(self) -> dict:
        return {"kind": "gan", "checkpoint": str(self.checkpoint), "size": list(self.size)}


# --- one step ---------------------------------------------------------------------------------

def _jitter(images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Random per-image brightness and contrast: features must not key on absolute colour."""
    if amount <= 0:
        return images
    b = images.shape[0]
    gain = 1.0 + amount * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
    shift = amount * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
    return ((images - images.mean(dim=(1, 2, 3), keepdim=True)) * gain
            + images.mean(dim=(1, 2, 3), keepdim=True) + shift).clamp(-1, 1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of all randomness of training step ``step`` (exact resume)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def matcher_loss(matcher: FeatureMatcher, pairs: list[ImagePair], cfg: MatcherConfig, generator: torch.Generator,
                 device: torch.device, share: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, dict]:
    """Symmetric marginal contrastive loss averaged over pairs, and statistics.

    For each pair, ``cfg.samples`` valid pixels of A are matched to the pixel of B with the
    nearest canonical coordinate (within ``cfg.max_dist`` map pixels); up to
    ``cfg.background_negatives`` invalid pixels of each image are extra negatives. Pairs with
    fewer than 2 positives are left out.
    Returns (loss, {"positives": mean positives per pair, "accuracy": share of sampled pixels of
    A whose most similar sampled pixel of B is its positive}).

    ``share`` (torchrun): the indices of the pairs this process computes, e.g.
    ``range(rank, len(pairs), world_size)``. The random draws (jitter, positives, background
    negatives) are made for *all* pairs, in the same order as without a share, so they do not
    depend on the world size; features and losses are computed for the share only. The loss and
    ``accuracy`` are then the share's part of the batch means (sum over the share's pairs / the
    batch's pairs with ≥ 2 positives): summed over the processes they give the one-process values.
    ``positives`` is the batch mean on every process. Default: all pairs (the batch means).
    """
    n_pairs = len(pairs)
    images = torch.stack([p.image_a for p in pairs] + [p.image_b for p in pairs])
    images = _jitter(images, cfg.jitter, generator)
    # Every draw of the step, pair by pair; None for a pair with fewer than 2 positives.
    draws: list[Optional[tuple[torch.Tensor, ...]]] = []
    for pair in pairs:
        h, w = pair.coords_a.shape[-2:]
        max_dist = cfg.max_dist * 2.0 / max(h, w)  # map pixels → canonical units ([-1, 1] spans the side)
        idx_a, idx_b = sample_positive_pairs(pair.coords_a, pair.valid_a, pair.coords_b, pair.valid_b,
                                             cfg.samples, generator, max_dist)
        if idx_a.numel() < 2:
            draws.append(None)
            continue
        draws.append((idx_a, idx_b, _background_pixels(pair.valid_a, cfg.background_negatives, generator),
                      _background_pixels(pair.valid_b, cfg.background_negatives, generator)))
    counted = [d[0].numel() for d in draws if d is not None]
    if not counted:
        raise UserError("no pair had 2 or more positives: are the stores' valid masks empty, or is "
                        "matcher.max_dist too small?")

    own = list(range(n_pairs) if share is None else share)
    features = matcher(images[own + [n_pairs + p for p in own]].to(device))  # (2·|own|, D, H, W): A's, then B's
    losses, correct = [], []
    for i, p in enumerate(own):
        if draws[p] is None:
            continue
        idx_a, idx_b, bg_a, bg_b = draws[p]
        feat_a, feat_b = features[i].flatten(1), features[len(own) + i].flatten(1)
        fa = feat_a[:, idx_a.to(device)].t()
        fb = feat_b[:, idx_b.to(device)].t()
        za, zb = matcher.project(fa), matcher.project(fb)
        na = matcher.project(feat_a[:, bg_a.to(device)].t()) if bg_a is not None else None
        nb = matcher.project(feat_b[:, bg_b.to(device)].t()) if bg_b is not None else None
        loss = 0.5 * (marginal_contrastive_loss(za, zb, margin=cfg.margin, tau=cfg.contrastive_tau, negatives=nb)
                      + marginal_contrastive_loss(zb, za, margin=cfg.margin, tau=cfg.contrastive_tau, negatives=na))
        losses.append(loss)
        with torch.no_grad():
            sim = F.normalize(fa, dim=1) @ F.normalize(fb, dim=1).t()
            correct.append(float((sim.argmax(dim=1) == torch.arange(len(fa), device=device)).float().mean()))
    stats = {"positives": float(np.mean(counted))}
    if share is None:
        stats["accuracy"] = float(np.mean(correct))
        return torch.stack(losses).mean(), stats
    stats["accuracy"] = float(sum(correct)) / len(counted)
    if not losses:  # a share without a usable pair: a zero that still reaches the weights
        return features.sum() * 0.0, stats
    return torch.stack(losses).sum() / len(counted), stats


def _background_pixels(valid: Optional[torch.Tensor], count: int, generator: torch.Generator) -> Optional[torch.Tensor]:
    """Flat indices of up to ``count`` random invalid (background) pixels, or None."""
    if valid is None or count == 0:
        return None
    candidates = torch.nonzero(~valid.reshape(-1)).squeeze(1)
    if candidates.numel() == 0:
        return None
    return candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]


# --- the loop -----------------------------------------------------------------------------------

def _check_resumable(saved: Recipe, recipe: Recipe, path: Path) -> None:
    a = {k: v for k, v in dataclasses.asdict(saved.matcher).items() if k not in _RESUMABLE_CHANGES}
    b = {k: v for k, v in dataclasses.asdict(recipe.matcher).items() if k not in _RESUMABLE_CHANGES}
    diff = sorted(k for k in a if a[k] != b.get(k))
    if diff:
        shown = ", ".join(f"matcher.{k} {a[k]!r} → {b[k]!r}" for k in diff[:4])
        raise UserError(f"{path}: this run was started with another matcher recipe ({shown}); "
                        "resume with the same recipe or choose a new --out")


def check_matcher_batch_split(cfg: MatcherConfig, world_size: int) -> None:
    """Each process computes ``matcher.batch / world_size`` of a step's pairs: it must divide."""
    if cfg.batch % world_size:
        suggestion = -(-cfg.batch // world_size) * world_size
        raise UserError(f"matcher.batch = {cfg.batch} must split evenly over {world_size} process(es) "
                        f"(each computes an equal share of a step's pairs); use a multiple of {world_size}, "
                        f"e.g. --set matcher.batch={suggestion}")


def train_matcher(recipe: Recipe, out: str | Path, source: PairSource, *, device: torch.device, seed: int,
                  max_steps: Optional[int] = None,
                  on_step: Optional[Callable[[int, int, dict], None]] = None,
                  dist: Optional[distributed.Distributed] = None) -> dict:
    """Train (or resume) a matcher in run directory ``out``; return the last logged metrics.

    ``max_steps`` stops at that total step (≤ ``recipe.matcher.steps``); a later run with the same
    ``out`` continues. ``on_step(step, total, metrics)`` is called after every step (progress).

    ``dist`` (torchrun, from ``distributed.setup``; its device replaces ``device``): every process
    draws the same pairs and random numbers, computes its share of the pairs (``rank::world_size``)
    and the gradients are summed, so a step equals one process's step on the same batch. Only
    rank 0 writes files and calls ``on_step``; every process resumes from the same ``latest.pt``.
    The caller joins and leaves the job (``setup`` / ``teardown``).
    """
    dist = dist if dist is not None else distributed.Distributed(0, 1, device)
    device = dist.device
    cfg = recipe.matcher
    check_matcher_batch_split(cfg, dist.world_size)
    out = Path(out)
    if dist.is_main:
        output_folder(out)
        remove_stale_temporaries(out, ".pt")
    dist.barrier()
    latest = out / "latest.pt"
    total = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    share = range(dist.rank, cfg.batch, dist.world_size) if dist.active else None

    torch.manual_seed(seed)
    with torch.device(device):
        matcher = build_matcher(cfg)
    optimizer = torch.optim.Adam(matcher.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    step = 0
    if latest.exists():
        data = load_checkpoint(latest, map_location=device)
        if data["kind"] != "matcher":
            raise UserError(f"{latest}: a {data['kind']!r} checkpoint; --out must be a matcher run directory")
        _check_resumable(recipe_from_json(data["config"], source=f"{latest} (stored config)"), recipe, latest)
        load_state_strict(matcher, data["networks"]["matcher"], "matcher", latest)
        optimizer.load_state_dict(data["optimizers"]["matcher"])
        step = int(data["step"])
        seed = int(data["extra"]["seed"])
    if dist.is_main:
        RunDir(out).truncate_metrics(step)  # lines past the checkpoint are redone
        atomic_write_json(out / "config.json", {"kind": "matcher", "recipe": recipe.to_dict(), "seed": seed,
                                                "source": source.describe(), "device": str(device),
                                                "world_size": dist.world_size})

    def save() -> None:
        if dist.is_main:
            save_checkpoint(latest, {"kind": "matcher", "step": step, "config": recipe.to_json(),
                                     "networks": {"matcher": matcher.state_dict()},
                                     "optimizers": {"matcher": optimizer.state_dict()},
                                     "extra": {"seed": seed, "source": source.describe(),
                                               "matcher_args": dict(matcher.config)}})
        dist.barrier()  # no process reads on (or leaves) before the checkpoint is complete

    log_every, ckpt_every = recipe.schedule.log_every, recipe.schedule.checkpoint_every
    metrics: dict = {}
    matcher.train()
    start = time.perf_counter()
    while step < total:
        generator = step_generator(seed, step)
        pairs = source.sample(generator, cfg.batch)
        loss, stats = matcher_loss(matcher, pairs, cfg, generator, device, share)
        optimizer.zero_grad(set_to_none=True)
        if dist.active:
            # The shares' losses (and accuracies) add up to the batch means; average_* divide by
            # the world size, so scale by it first.
            logs = dist.average_scalars({"loss": float(loss.detach()) * dist.world_size,
                                         "accuracy": stats["accuracy"] * dist.world_size,
                                         "positives": stats["positives"]})
            if not math.isfinite(logs["loss"]):
                raise UserError(f"matcher loss became {logs['loss']} at step {step}: lower matcher.lr")
            (loss * dist.world_size).backward()
            for param in matcher.parameters():  # a share may leave a weight without a gradient
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            dist.average_gradients(matcher.parameters())
            stats = {"positives": logs["positives"], "accuracy": logs["accuracy"]}
            logged_loss = logs["loss"]
        else:
            if not torch.isfinite(loss):
                raise UserError(f"matcher loss became {loss.item()} at step {step}: lower matcher.lr")
            loss.backward()
            logged_loss = float(loss.detach())
        optimizer.step()
        step += 1
        metrics = {"step": step, "loss": logged_loss, **stats, "seconds": time.perf_counter() - start}
        if dist.is_main and (step % log_every == 0 or step == total):
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if step % ckpt_every == 0 or step == total:
            save()
        if on_step is not None and dist.is_main:
            on_step(step, total, metrics)
    if not latest.exists():  # nothing to do (already at total) but leave a checkpoint behind
        save()
    return metrics
