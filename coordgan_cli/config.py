"""Typed recipe configs: TOML files in ``recipes/`` → frozen dataclasses.

A recipe has sections ``[model]``, ``[data]``, ``[losses]``, ``[optim]``, ``[schedule]``,
``[encoder]``, ``[matcher]`` and ``[output]``; every field has a default (the paper's value where
the paper gives one). Validation is strict: an unknown key is an error naming the file, the key
and the nearest valid key; a wrong type or an out-of-range value names the file, the key and
what was expected. ``--set section.key=value`` overrides (value in TOML syntax, bare words are
strings).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from coordgan_cli.errors import UserError


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def _f(default: Any, doc: str = "", **limits: Any) -> Any:
    """A field with a default, a one-line doc and optional numeric limits (see _range)."""
    meta = {"doc": doc, **limits}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes (DESIGN §2). Defaults are the paper's 128 px configuration."""

    size: int = _f(128, "output image size in pixels", lo=16)
    coord_size: int = _f(128, "canonical grid / correspondence map size (the synthesis resolution)", lo=8)
    latent_dim: int = _f(512, "structure and texture z / w size", lo=1)
    mapping_layers: int = _f(8, "equalised linear layers per mapping network", lo=1)
    mapping_lr_mul: float = _f(0.01, "learning-rate multiplier of the mapping networks", lo=0.0, lo_open=True)
    warp_hidden: int = _f(512, "hidden width of the coordinate warping MLP", lo=1)
    warp_layers: int = _f(3, "linear layers of the coordinate warping MLP", lo=2)
    pe_channels: int = _f(512, "Fourier positional-encoding channels of the correspondence map", lo=2)
    pe_scale: float = _f(1.0, "initial frequency scale of the Fourier encoding (1: std pi/2 per canonical unit, "
                         "about a quarter to one cycle across the square; larger: finer patterns, so a small "
                         "map displacement moves edges; initialisation only)", lo=0.0, lo_open=True)
    synthesis_channels: int = _f(512, "channels of the modulated conv layers", lo=1)
    synthesis_layers: int = _f(10, "modulated 3x3 conv layers after the input layer (RGB skip every two)", lo=2)
    highres_channels: list[int] = _f([], "channels of the upsampling blocks appended for >coord_size output")
    warp_skip: bool = _f(True, "add the canonical coordinate to the warp MLP's output before tanh, so an "
                         "untrained map starts near the identity")
    warp_code_gain: float = _f(1.0, "initial scale of the structure code's weights in the warp MLP's first layer "
                               "(larger: maps of different codes start further apart; initialisation only)", lo=0.0)
    warp_affine: bool = _f(False, "a global affine head before the warp MLP: the structure code sets six numbers "
                           "(turn, scale, stretch, shear, shift) that move the whole canonical grid, "
                           "and the MLP bends it")
    warp_affine_init: float = _f(0.05, "initial spread of the affine head's parameters across structure codes "
                                 "(0.05: shifts of about 2.5 % of the image side; initialisation only)", lo=0.0)
    warp_residual: float = _f(0.0, "bound on what the warp MLP adds to each (moved) grid point before its tanh "
                              "(0: unbounded; 0.3: about 4 px of a 32 px map), so the map cannot fold", lo=0.0)
    noise: Literal["random", "const", "none"] = _f("random", "noise injection: random, const (deterministic) or none")
    backward_mlp: bool = _f(False, "train the backward MLP of CoordGAN-B")
    d_channel_multiplier: int = _f(2, "channel multiplier of the StyleGAN2 image discriminator", lo=1)
    d_max_channels: int = _f(512, "channel cap of the image discriminator", lo=1)
    patch_size: int = _f(32, "side of the crops the patch discriminator sees", lo=8)
    patch_channels: int = _f(256, "feature width of the patch discriminator", lo=1)
    encoder_size: int = _f(0, "input size of the encoder in pixels; 0 = coord_size", lo=0)
    encoder_channels: list[int] = _f([32, 64, 128, 256, 512], "encoder widths: from-RGB then one per downsampling block")
    encoder_structure_channels: int = _f(64, "channels of the encoder's structure head before its linear layer", lo=1)
    encoder_texture_channels: list[int] = _f([1024, 2048], "widths of the encoder's strided texture convs", lo=1)


@dataclass(frozen=True)
class DataConfig:
    path: str = _f("", "image folder (recursive); --data overrides")
    hflip: bool = _f(True, "random horizontal flips")
    workers: int = _f(0, "data-loader worker processes", lo=0)


@dataclass(frozen=True)
class LossConfig:
    """Weights and schedules of the generator objective (DESIGN §3)."""

    gan: float = _f(2.0, "lambda_GAN (reached at the end of the warm-up)", lo=0.0)
    gan_start: float = _f(1.0, "lambda_GAN at step 0, ramped linearly to gan over warmup_steps (reference code: 1 -> 2)",
                          lo=0.0)
    chamfer: float = _f(100.0, "lambda_cham (supplement 100; reference code 200)", lo=0.0)
    warp: float = _f(5.0, "lambda_warp", lo=0.0)
    warp_start: int = _f(0, "step at which the warp loss starts; its weight then ramps over warmup_steps "
                         "(0: from step 0, ramped with the other terms)", lo=0)
    warp_tau: float = _f(0.0, "softmax temperature of the warp loss; 0 = derived from warp_reach and the map size",
                         lo=0.0)
    warp_reach: float = _f(0.635, "warp-kernel reach in map pixels when warp_tau = 0 (0.635 = the paper's "
                           "tau 0.01, Euclidean, on its 128 px map)", lo=0.0, lo_open=True)
    warp_distance: Literal["squared", "euclidean"] = _f(
        "squared", "warp-loss softmax over -dist/tau: squared (attention form, fused kernels) or euclidean (chunked)"
    )
    warp_l1: float = _f(0.0, "weight of an L1 term added to the warp loss's perceptual distance (sees the "
                        "few-pixel misalignment a shift-tolerant network misses on small maps)", lo=0.0)
    texture_swap: float = _f(5.0, "lambda_t", lo=0.0)
    texture_distance: Literal["layout", "perceptual"] = _f(
        "layout", "texture-swap distance: layout (gradient-magnitude correlation: sees layout, not colour) or "
        "perceptual (the paper's LPIPS: sees colour more than layout)")
    texture_swap_ramp: bool = _f(True, "ramp lambda_t over the warm-up (false: full weight from step 0, so the "
                                 "texture code never gets to own the layout)")
    structure_swap: float = _f(1.0, "lambda_s", lo=0.0)
    structure_swap_start: int = _f(10000, "step at which the patch discriminator and the structure-swap loss "
                                   "start (reference code: 10 k)", lo=0)
    backward: float = _f(1.0, "weight of the backward-MLP L1 loss (CoordGAN-B)", lo=0.0)
    r1_image: float = _f(10.0, "R1 gamma of the image discriminator", lo=0.0)
    r1_patch: float = _f(1.0, "R1 gamma of the patch discriminator", lo=0.0)
    r1_every: int = _f(16, "lazy R1 interval in steps", lo=1)
    warmup_steps: int = _f(20000, "linear warm-up of warp, texture-swap and structure-swap weights", lo=0)
    patch_crops: int = _f(8, "crops per image for the patch discriminator", lo=1)
    patch_min: float = _f(0.125, "smallest crop side as a fraction of the image", lo=0.0, hi=1.0, lo_open=True)
    patch_max: float = _f(0.25, "largest crop side as a fraction of the image", lo=0.0, hi=1.0, lo_open=True)
    perceptual: Literal["lpips-vgg", "lpips-alex", "stlpips-vgg", "stlpips-alex", "random-tiny"] = _f(
        "lpips-vgg", "perceptual distance backend (random-tiny is for tests only)"
    )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(0.002, "Adam learning rate", lo=0.0, lo_open=True)
    betas: list[float] = _f([0.0, 0.99], "Adam betas")
    batch: int = _f(16, "global batch size (even: images are paired)", lo=2)
    ema_kimg: float = _f(10.0, "EMA half-life in thousands of images", lo=0.0)
    accumulate: int = _f(1, "micro-batches per process and step (less memory; gradients summed, same update)", lo=1)


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = _f(300000, "total optimisation steps", lo=1)
    log_every: int = _f(100, "steps between metrics.jsonl lines", lo=1)
    sample_every: int = _f(2000, "steps between sample grids", lo=1)
    checkpoint_every: int = _f(5000, "steps between checkpoints", lo=1)
    keep_checkpoints: int = _f(3, "checkpoints kept besides latest.pt", lo=1)


@dataclass(frozen=True)
class EncoderStageConfig:
    """Encoder stage (generator frozen), DESIGN §3."""

    reconstruction: float = _f(10.0, "lambda_rec on L1 + perceptual reconstruction", lo=0.0)
    consistency: float = _f(10.0, "lambda_con latent consistency", lo=0.0)
    texture_swap: float = _f(5.0, "lambda_t", lo=0.0)
    equivariance: float = _f(0.0, "lambda_eq: a real image warped by a random affine map must get its map warped "
                             "the same way (L1 on the map; 0 = the paper's objective)", lo=0.0)
    warped_consistency: float = _f(0.0, "lambda_wc: a generated image warped by a random affine map (the "
                                   "equivariance_* ranges) must get its true map warped the same way (L1)", lo=0.0)
    equivariance_turn: float = _f(15.0, "largest turn of those random warps, degrees", lo=0.0)
    equivariance_scale: float = _f(0.15, "largest relative scale change of those warps", lo=0.0, hi=0.9)
    equivariance_shift: float = _f(0.1, "largest shift of those warps, fraction of the image half-side", lo=0.0)
    steps: int = _f(200000, "encoder training steps", lo=1)


@dataclass(frozen=True)
class MatcherConfig:
    """Correlation matcher (CoCosNet / MCL-Net family), DESIGN §6."""

    channels: int = _f(64, "feature channels of the dense feature extractor", lo=1)
    tau: float = _f(0.01, "correlation softmax temperature", lo=0.0, lo_open=True)
    margin: float = _f(0.25, "additive angular margin of the contrastive loss", lo=0.0)
    contrastive_tau: float = _f(0.07, "temperature of the contrastive loss", lo=0.0, lo_open=True)
    samples: int = _f(256, "positions sampled per image pair", lo=2)
    projection: bool = _f(True, "2-layer 256-unit projection head")
    width: int = _f(32, "stem width of the feature extractor (stage i: min(width*2^i, 8*width))", lo=1)
    depth: int = _f(3, "stride-2 stages of the feature extractor (receptive field)", lo=0)
    k: int = _f(128, "reference positions kept per query pixel in the chunked top-k correlation", lo=1)
    patch: bool = _f(False, "normalise 3x3 feature patches (CoCosNet option) before correlating")
    work_size: int = _f(0, "shorter side (px) at which propagate/evaluate run the matcher; 0 = the size it was "
                        "trained at (its checkpoint's pair source)", lo=0)
    steps: int = _f(2000, "matcher training steps", lo=1)
    batch: int = _f(4, "image pairs per training step", lo=1)
    lr: float = _f(0.001, "Adam learning rate of the matcher", lo=0.0, lo_open=True)
    betas: list[float] = _f([0.9, 0.999], "Adam betas of the matcher")
    max_dist: float = _f(1.0, "a positive's canonical coordinates may differ by at most this many map pixels", lo=0.0)
    background_negatives: int = _f(64, "background pixels of B added as extra negatives per pair", lo=0)
    jitter: float = _f(0.2, "random brightness/contrast jitter per training image (0 = off)", lo=0.0)
    head_channels: int = _f(256, "train-matcher --data: width of the projection head on the backbone hypercolumns",
                            lo=1)
    adapt_size: int = _f(256, "train-matcher --data: side (px) of the square training views", lo=32)
    warp: float = _f(0.15, "train-matcher --data: homography strength (corner shift, fraction of the half-side)",
                     lo=0.0, hi=0.5)
    elastic: float = _f(0.03, "train-matcher --data: elastic displacement (fraction of the half-side)", lo=0.0,
                        hi=0.5)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _f("runs/coordgan", "run directory; --out overrides")


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    encoder: EncoderStageConfig = field(default_factory=EncoderStageConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **sections: Any) -> "Recipe":
        return dataclasses.replace(self, **sections)


_SECTIONS: dict[str, type] = {name: tp for name, tp in typing.get_type_hints(Recipe).items() if name != "name"}


def _nearest(key: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.0)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (int → float where a float is due)."""
    origin = typing.get_origin(tp)
    bad = UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open", False)
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise UserError(f"{where}: expected a value {'>' if lo_open else '>='} {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise UserError(f"{where}: expected a value <= {hi}, got {v!r}")


def _build_section(cls: type, table: Mapping[str, Any], source: str, section: str) -> Any:
    if not isinstance(table, Mapping):
        raise UserError(f"{source}: [{section}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise UserError(f"{source}: unknown key {section}.{key}{_nearest(key, list(fields))}")
        where = f"{source}: {section}.{key}"
        value = _coerce(value, hints[key], where)
        _check_range(value, fields[key].metadata, where)
        kwargs[key] = value
    return cls(**kwargs)


def recipe_from_dict(data: Mapping[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe (sections of key/value tables) into a frozen Recipe."""
    sections: dict[str, Any] = {}
    name = data.get("name", Path(source).stem if source != "<recipe>" else "recipe")
    if not isinstance(name, str):
        raise UserError(f"{source}: name: expected a string, got {name!r}")
    for key, value in data.items():
        if key == "name":
            continue
        if key not in _SECTIONS:
            raise UserError(f"{source}: unknown section [{key}]{_nearest(key, list(_SECTIONS) + ['name'])}")
        sections[key] = _build_section(_SECTIONS[key], value, source, key)
    recipe = Recipe(name=name, **sections)
    _check_consistency(recipe, source)
    return recipe


def _check_consistency(recipe: Recipe, source: str) -> None:
    m = recipe.model
    expected = m.coord_size * 2 ** len(m.highres_channels)
    if m.size != expected:
        raise UserError(
            f"{source}: model.size = {m.size} but coord_size {m.coord_size} with "
            f"{len(m.highres_channels)} upsampling block(s) gives {expected}"
        )
    if recipe.optim.batch % 2:
        raise UserError(f"{source}: optim.batch must be even (images are paired), got {recipe.optim.batch}")
    if len(recipe.optim.betas) != 2:
        raise UserError(f"{source}: optim.betas: expected a list of 2 numbers, got {recipe.optim.betas!r}")
    if recipe.losses.patch_min > recipe.losses.patch_max:
        raise UserError(f"{source}: losses.patch_min must not exceed losses.patch_max")


def _parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {text!r}: expected section.key=value (e.g. optim.batch=8)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is a string
    return parts[0], parts[1], value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a parsed (not yet validated) recipe dict."""
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for text in overrides:
        section, key, value = _parse_override(text)
        if section not in _SECTIONS:
            raise UserError(f"--set {text!r}: unknown section {section!r}{_nearest(section, list(_SECTIONS))}")
        data.setdefault(section, {})[key] = value
    return data


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file") from exc
    data = apply_overrides(data, overrides)
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, source=str(path))


# Stored configs written before a field existed meant the behaviour of that time, not today's
# default: these values are filled in for keys a stored config lacks ("gan_start": None = gan).
_LEGACY_VALUES: dict[str, dict[str, Any]] = {
    "model": {"warp_skip": False},
    "losses": {"gan_start": None, "texture_distance": "perceptual", "structure_swap_start": 0},
}


def recipe_from_json(text: str, source: str = "<checkpoint>") -> Recipe:
    """Rebuild a Recipe from ``Recipe.to_json()`` (as stored in checkpoints and stores).

    A config stored before a field existed gets that field's behaviour of the time (see
    ``_LEGACY_VALUES``), so an old model keeps its meaning and an old run resumes unchanged."""
    data = json.loads(text)
    for section, values in _LEGACY_VALUES.items():
        table = data.get(section)
        if not isinstance(table, dict):
            continue
        for key, value in values.items():
            if key not in table:
                table[key] = table.get("gan", 2.0) if key == "gan_start" else value
    return recipe_from_dict(data, source=source)


def describe(recipe: Recipe) -> list[tuple[str, str, Any, str]]:
    """(section, key, value, doc) rows for printing a resolved recipe."""
    rows = []
    for section in _SECTIONS:
        obj = getattr(recipe, section)
        for f in dataclasses.fields(obj):
            rows.append((section, f.name, getattr(obj, f.name), f.metadata.get("doc", "")))
    return rows
