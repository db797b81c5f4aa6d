"""Tiny generator / encoder checkpoints and image folders for the inference, invert, swap and
train-encoder tests (built from recipes/tiny.toml with fixed seeds; a few hundred kB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coordgan_cli.config import MatcherConfig, Recipe, load_recipe
from coordgan_cli.inference import encoder_checkpoint_payload
from coordgan_cli.io.checkpoint import file_sha256, save_checkpoint
from coordgan_cli.io.images import write_image
from coordgan_cli.models import build_networks

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"


def tiny_recipe(**overrides: str) -> Recipe:
    return load_recipe(TINY, [f"{k}={v}" for k, v in overrides.items()])


def make_generator_checkpoint(path: Path, seed: int = 0, recipe: Recipe | None = None) -> Path:
    """A randomly initialised tiny generator saved as a `train`-style generator checkpoint."""
    recipe = recipe or tiny_recipe()
    torch.manual_seed(seed)
    g = build_networks(recipe.model)["generator"]
    state = g.state_dict()
    return save_checkpoint(path, {"kind": "generator", "step": 0, "config": recipe.to_json(),
                                  "networks": {"generator": state}, "ema": {"generator": state}})


def make_encoder_checkpoint(path: Path, generator_ckpt: Path, seed: int = 1) -> Path:
    """A randomly initialised tiny encoder paired with ``generator_ckpt``."""
    data = torch.load(generator_ckpt, weights_only=True)
    from coordgan_cli.config import recipe_from_json

    recipe = recipe_from_json(data["config"])
    torch.manual_seed(seed)
    encoder = build_networks(recipe.model)["encoder"]
    return save_checkpoint(path, encoder_checkpoint_payload(
        recipe, encoder.state_dict(), data["ema"]["generator"], file_sha256(generator_ckpt), 0, generator_step=0))


TINY_MATCHER = MatcherConfig(channels=8, width=4, depth=1, k=32)


def make_matcher_checkpoint(path: Path, seed: int = 0, cfg: MatcherConfig = TINY_MATCHER) -> Path:
    """A random-weight tiny FeatureMatcher saved the way ``train_matcher`` saves ``latest.pt``."""
    from coordgan_cli.training.matcher import build_matcher

    torch.manual_seed(seed)
    matcher = build_matcher(cfg)
    save_checkpoint(path, {"kind": "matcher", "step": 0, "config": Recipe(matcher=cfg).to_json(),
                           "networks": {"matcher": matcher.state_dict()}, "optimizers": {},
                           "extra": {"seed": seed, "matcher_args": dict(matcher.config)}})
    return path


def make_images(folder: Path, n: int, seed: int = 0, *, sub_every: int = 3) -> list[Path]:
    """``n`` smooth random RGB images of varied sizes; every ``sub_every``-th goes in ``sub/``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = 24 + (i % 5) * 4, 28 + (i % 3) * 6
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
        img = np.kron(base, np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        p = folder / ("sub" if sub_every and i % sub_every == 0 else "") / f"img{i:03d}.png"
        write_image(p, img)
        paths.append(p)
    return paths
