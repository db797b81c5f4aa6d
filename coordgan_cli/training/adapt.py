"""Adapting the pretrained-feature matchers to an unlabelled folder (``train-matcher --data``).

A ``ProjectionHead`` (two 1×1 convolutions) is trained on top of FROZEN backbone hypercolumns
with MCL-Net's marginal contrastive loss; the pairs are an image and a randomly warped,
colour-jittered copy of it (``data.warp_pairs``), whose correspondence is exact. Positives are
the feature-grid cells of A and B that show the same point (nearest cell centre within
``matcher.max_dist`` cells); every other sampled cell of the pair is a negative.

The backbone never trains, so view A's hypercolumns (the unwarped image) are computed once per
image and cached; only the warped views run through the backbone each step.

Run directory as ``train-matcher --store``: ``config.json``, ``metrics.jsonl``, ``latest.pt``
(``kind="matcher"`` with ``networks["head"]``; ``extra`` records the backbone, the head's
arguments, the seed and the pair source). Rerunning with the same ``--out`` resumes exactly
(step ``s`` draws everything from a generator seeded with (seed, s)).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.config import Recipe, recipe_from_json
from coordgan_cli.correspondence.contrastive import marginal_contrastive_loss, sample_positive_pairs
from coordgan_cli.correspondence.projection_head import ProjectionHead, backbone_record
from coordgan_cli.data.warp_pairs import WarpPairSource, grid_coordinates
from coordgan_cli.errors import UserError
from coordgan_cli.io.atomic import atomic_write_json
from coordgan_cli.io.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from coordgan_cli.io.paths import output_folder, remove_stale_temporaries
from coordgan_cli.training.matcher import _check_resumable, step_generator
from coordgan_cli.training.run_dir import RunDir


class CachedFeatures:
    """Backbone hypercolumns of view A per image index (computed on first use), and of any batch."""

    def __init__(self, backbone, source: WarpPairSource, device: torch.device) -> None:
        self.backbone, self.source, self.device = backbone, source, device
        self._cache: dict[int, torch.Tensor] = {}

    def of_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] → (B, C, h, w) hypercolumns (a plain tensor, usable by autograd)."""
        return self.backbone.features(((images + 1.0) / 2.0).to(self.device)).clone()

    def of_view_a(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            self._cache[index] = self.of_images(self.source.view_a(index)[None])[0]
        return self._cache[index]


def head_loss(head: ProjectionHead, draws: list, features: CachedFeatures, cfg, generator: torch.Generator
              ) -> tuple[torch.Tensor, dict]:
    """Symmetric marginal contrastive loss over a step's (index, ImagePair) draws, and statistics.

    Per pair: ``cfg.samples`` grid cells of A, each paired with the B cell whose centre shows the
    nearest point (within ``cfg.max_dist`` cells; cells of B partly outside A are not used).
    Returns (loss, {"positives": mean positives per pair, "accuracy": share of sampled A cells
    whose most similar sampled B cell, after the head, is their positive}).
    """
    feats_b = features.of_images(torch.stack([pair.image_b for _, pair in draws]))
    grid = tuple(feats_b.shape[-2:])
    feats_a = torch.stack([features.of_view_a(i) for i, _ in draws])
    proj_a, proj_b = head(feats_a), head(feats_b)
    losses, correct, counted = [], [], []
    device = proj_a.device
    for n, (_, pair) in enumerate(draws):
        coords_a, _ = grid_coordinates(pair.coords_a, None, grid)
        coords_b, valid_b = grid_coordinates(pair.coords_b, pair.valid_b, grid)
        max_dist = cfg.max_dist * 2.0 / max(grid)  # cells → normalised units
        idx_a, idx_b = sample_positive_pairs(coords_a, None, coords_b, valid_b, cfg.samples, generator, max_dist)
        if idx_a.numel() < 2:
            continue
        counted.append(idx_a.numel())
        za = proj_a[n].flatten(1)[:, idx_a.to(device)].t()
        zb = proj_b[n].flatten(1)[:, idx_b.to(device)].t()
        losses.append(0.5 * (marginal_contrastive_loss(za, zb, margin=cfg.margin, tau=cfg.contrastive_tau)
                             + marginal_contrastive_loss(zb, za, margin=cfg.margin, tau=cfg.contrastive_tau)))
        with torch.no_grad():
            sim = F.normalize(za, dim=1) @ F.normalize(zb, dim=1).t()
            correct.append(float((sim.argmax(dim=1) == torch.arange(len(za), device=device)).float().mean()))
    if not losses:
        raise UserError("no warped pair kept 2 or more positives: lower matcher.warp or raise matcher.max_dist")
    return torch.stack(losses).mean(), {"positives": float(np.mean(counted)), "accuracy": float(np.mean(correct))}


def train_head(recipe: Recipe, out: str | Path, source: WarpPairSource, backbone, *, device: torch.device,
               seed: int, max_steps: Optional[int] = None,
               on_step: Optional[Callable[[int, int, dict], None]] = None) -> dict:
    """Train (or resume) a projection head in run directory ``out``; return the last logged metrics.

    ``backbone``: a frozen ``coordgan_cli.backbones`` backbone on ``device``. ``max_steps`` stops
    at that total step; a later run with the same ``out`` continues. ``on_step(step, total,
    metrics)`` is called after every step.
    """
    cfg = recipe.matcher
    out = Path(out)
    output_folder(out)
    remove_stale_temporaries(out, ".pt")
    latest = out / "latest.pt"
    total = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    record = backbone_record(backbone)

    torch.manual_seed(seed)
    with torch.device(device):
        head = ProjectionHead(backbone.channels, cfg.head_channels)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    step = 0
    if latest.exists():
        data = load_checkpoint(latest, map_location=device)
        if data["kind"] != "matcher" or "head" not in data["networks"]:
            raise UserError(f"{latest}: not a projection-head run (trained without --data); choose a new --out")
        _check_resumable(recipe_from_json(data["config"], source=f"{latest} (stored config)"), recipe, latest)
        saved = data["extra"]["backbone"]
        if saved != record:
            raise UserError(f"{latest}: this run was started on backbone {saved['name']} {saved['layers']}; "
                            "resume with the same --backbone or choose a new --out")
        load_state_strict(head, data["networks"]["head"], "head", latest)
        optimizer.load_state_dict(data["optimizers"]["head"])
        step = int(data["step"])
        seed = int(data["extra"]["seed"])
    RunDir(out).truncate_metrics(step)  # lines past the checkpoint are redone
    atomic_write_json(out / "config.json", {"kind": "matcher", "recipe": recipe.to_dict(), "seed": seed,
                                            "source": source.describe(), "backbone": record, "device": str(device)})

    def save() -> None:
        save_checkpoint(latest, {"kind": "matcher", "step": step, "config": recipe.to_json(),
                                 "networks": {"head": head.state_dict()},
                                 "optimizers": {"head": optimizer.state_dict()},
                                 "extra": {"seed": seed, "source": source.describe(), "backbone": record,
                                           "head_args": dict(head.config)}})

    features = CachedFeatures(backbone, source, device)
    log_every, ckpt_every = recipe.schedule.log_every, recipe.schedule.checkpoint_every
    metrics: dict = {}
    head.train()
    start = time.perf_counter()
    while step < total:
        generator = step_generator(seed, step)
        draws = source.sample_indexed(generator, cfg.batch)
        loss, stats = head_loss(head, draws, features, cfg, generator)
        if not torch.isfinite(loss):
            raise UserError(f"head loss became {loss.item()} at step {step}: lower matcher.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        metrics = {"step": step, "loss": float(loss.detach()), **stats, "seconds": time.perf_counter() - start}
        if step % log_every == 0 or step == total:
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if step % ckpt_every == 0 or step == total:
            save()
        if on_step is not None:
            on_step(step, total, metrics)
    if not latest.exists():
        save()
    return metrics
