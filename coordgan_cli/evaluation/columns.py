"""The matcher columns of ``coordgan evaluate``: which labelling matchers are scored, and how each
is built from the evaluation's inputs.

Every column is a ``labelling`` Matcher (the same objects ``coordgan propagate --matcher`` runs).
A column's *builder* takes the ``ColumnInputs`` and returns the (unfitted) matcher, or raises
``UserError(reason)`` when it cannot run with these inputs (the column then reads "unavailable:
reason"). ``coordinates`` (the vote on the benchmark's maps), ``correlation`` and ``ensemble`` have
builders here; any other registered matcher (``labelling.register_matcher``) gets
``default_builder``: ``make_matcher(name, **the inputs its factory accepts)`` — so a new matcher is
a new column as soon as it is registered, and ``register_column`` is only needed when it wants
something else.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from coordgan_cli.errors import UserError
from coordgan_cli.labelling import Matcher, MatcherBase, References, available_matchers, make_matcher
from coordgan_cli.labelling.matchers import matcher_factory

class BrokenInput(UserError):
    """A file the user named (e.g. --matcher-ckpt) cannot be read: the evaluation stops with this
    error instead of listing the column as unavailable."""


# Always in the table (unavailable ones say why), in this order; other registered matchers join
# by default when they can run with the inputs, or when named in --matchers.
ALWAYS_LISTED = ("coordinates", "correlation", "ensemble")
# The pretrained-backbone matchers: default columns on photos (a labelled folder), else only when
# named in --matchers (a pretrained backbone on 128² synthetic or paper-protocol crops is slow and
# not what those tables compare).
PHOTO_COLUMNS = ("features", "classifier")


@dataclass
class ColumnInputs:
    """What the matchers of one evaluation may use.

    maps: the benchmark's correspondence maps (``evaluation.maps.BenchmarkMaps``); store / ckpt:
    where they come from (--store, --ckpt); matcher_ckpt: --matcher-ckpt (None: the shipped
    matcher); no_correlation: --no-correlation; mode / tau: the coordinate vote; work_size: the
    shorter side the feature matcher works at (``--work-size``; None: its training size, 0: the
    protocol's size) — the correlation's, hence the ensemble's.
    """

    protocol: str
    maps: Any
    device: Any
    mode: str
    tau: float
    store: Optional[Path] = None
    ckpt: Optional[Path] = None
    matcher_ckpt: Optional[Path] = None
    no_correlation: bool = False
    work_size: Optional[int] = None
    backbone: Optional[str] = None  # --backbone / --backbone-weights of the features and classifier columns
    backbone_weights: Optional[Path] = None
    photos: bool = False  # a labelled folder of photos: the PHOTO_COLUMNS join the default columns
    feature_matcher: dict = field(default_factory=dict)  # the report's "feature_matcher" entry
    _shared: dict = field(default_factory=dict)

    def shared(self, key: str, build: Callable[[], Any]) -> Any:
        """One object per key for every column (e.g. the correlation in its own and the ensemble's)."""
        if key not in self._shared:
            try:
                self._shared[key] = build()
            except UserError as exc:
                self._shared[key] = exc
        if isinstance(self._shared[key], UserError):
            raise self._shared[key]
        return self._shared[key]

    def coordinates(self) -> Matcher:
        from coordgan_cli.labelling import CoordinatesMatcher

        if self.maps is None:
            raise UserError("needs CoordGAN correspondence maps: give --ckpt/--model (a CoordGAN encoder) or "
                            "--store (precomputed maps)")
        return self.shared("coordinates", lambda: CoordinatesMatcher(maps=self.maps, mode=self.mode, tau=self.tau))

    def correlation(self) -> Matcher:
        """The feature-correlation matcher (loaded once, each query's probabilities kept for the
        ensemble); records ``feature_matcher``."""
        return self.shared("correlation", self._load_correlation)

    def _load_correlation(self) -> Matcher:
        from coordgan_cli.inference import resolve_matcher
        from coordgan_cli.labelling import CorrelationMatcher

        if self.no_correlation:
            reason = "skipped (--no-correlation)"
        else:
            try:
                path = resolve_matcher(self.matcher_ckpt)
                reason = ""
            except UserError as exc:
                reason = f"no feature matcher: {exc.message}"
        if reason:
            self.feature_matcher.update(available=False, reason=reason)
            raise UserError(reason)
        # The ensemble shares this object, so it works at the same size.
        try:
            matcher = CorrelationMatcher(matcher_ckpt=path, device=self.device, work_size=self.work_size)
        except UserError as exc:
            if self.matcher_ckpt is not None:  # the file the user named is broken: stop, do not skip the column
                raise BrokenInput(exc.message) from exc
            raise
        cfg = matcher.config
        self.feature_matcher.update(checkpoint=str(path), sha256=matcher.sha256, tau=cfg.tau, k=cfg.k,
                                    patch=cfg.patch, work_size=matcher.work_size,
                                    resolution=128 if self.protocol == "paper" else "native",
                                    ensemble="mean of the coordinate vote's class shares and the correlation's")
        return LastQuery(matcher)


class LastQuery(MatcherBase):
    """A matcher that keeps its last query's probabilities, so that two columns sharing it (the
    correlation and the ensemble) compute them once; fitted once per ``References``."""

    def __init__(self, inner: Matcher) -> None:
        self.inner, self.name = inner, inner.name
        self._key: Any = None
        self._value: Any = None

    def fit(self, references: References) -> None:
        if references is not self.references:
            self.inner.fit(references)
            self.references = references

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        key = (id(image), name)
        if key != self._key:
            self._key, self._value = key, self.inner.predict_proba(image, name=name)
        return self._value

    def settings(self) -> dict[str, Any]:
        return getattr(self.inner, "settings", lambda: {"matcher": self.name})()

    def close(self) -> None:
        getattr(self.inner, "close", lambda: None)()


ColumnBuilder = Callable[[ColumnInputs], Matcher]


def _ensemble(inputs: ColumnInputs) -> Matcher:
    from coordgan_cli.labelling import EnsembleMatcher

    return EnsembleMatcher(members=[inputs.coordinates(), inputs.correlation()])


def _pretrained(name: str) -> ColumnBuilder:
    """The features / classifier column: the device, --backbone, --backbone-weights and a positive
    --work-size (its square working side); a backbone the user named that cannot load stops the
    evaluation (BrokenInput) rather than greying out the column."""

    def build(inputs: ColumnInputs) -> Matcher:
        options: dict[str, Any] = {"device": inputs.device}
        if inputs.backbone is not None:
            options["backbone"] = inputs.backbone
        if inputs.backbone_weights is not None:
            options["backbone_weights"] = inputs.backbone_weights
        if inputs.work_size:
            options["work_size"] = inputs.work_size
        try:
            return make_matcher(name, **options)
        except UserError as exc:
            if inputs.backbone is not None or inputs.backbone_weights is not None:
                raise BrokenInput(exc.message) from exc
            raise

    return build


_BUILDERS: dict[str, ColumnBuilder] = {
    "coordinates": ColumnInputs.coordinates,
    "correlation": ColumnInputs.correlation,
    "ensemble": _ensemble,
    **{name: _pretrained(name) for name in PHOTO_COLUMNS},
}

# Inputs handed to a registered matcher's factory when it takes a keyword of that name (not the
# coordinate vote's mode and tau: another matcher's "tau" means its own temperature).
_FACTORY_INPUTS = ("device", "store", "ckpt", "matcher_ckpt", "work_size")


def default_builder(name: str) -> ColumnBuilder:
    """``make_matcher(name, **inputs)`` with those of ``_FACTORY_INPUTS`` that are set and that its
    factory accepts (all of them when it takes ``**options``)."""

    def build(inputs: ColumnInputs) -> Matcher:
        try:
            parameters = inspect.signature(matcher_factory(name)).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        accepted = {p.name for p in parameters}
        options = {k: getattr(inputs, k) for k in _FACTORY_INPUTS
                   if (takes_any or k in accepted) and getattr(inputs, k) is not None}
        try:
            return make_matcher(name, **options)
        except TypeError as exc:  # the factory needs an input evaluate does not have
            raise UserError(f"{name}: cannot be built from evaluate's inputs ({exc}); see "
                            "coordgan_cli.evaluation.register_column") from exc

    return build


def register_column(name: str, builder: ColumnBuilder) -> None:
    """Build the ``name`` column with ``builder(inputs)`` instead of ``default_builder``."""
    _BUILDERS[name] = builder


def known_columns() -> list[str]:
    return list(dict.fromkeys([*ALWAYS_LISTED, *available_matchers()]))


@dataclass
class Columns:
    """order: the table's matcher columns; matchers: name → unfitted matcher; unavailable: name → reason."""

    order: list[str]
    matchers: dict[str, Matcher]
    unavailable: dict[str, str]

    def close(self) -> None:
        for matcher in {id(m): m for m in self.matchers.values()}.values():
            getattr(matcher, "close", lambda: None)()


def build_columns(names: Optional[list[str]], inputs: ColumnInputs) -> Columns:
    """The matchers to score. names: --matchers (None: ``ALWAYS_LISTED`` plus every other registered
    matcher that can run with ``inputs``). ``coordinates`` always comes first: it is the report's
    main result."""
    known = known_columns()
    if names is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"--matchers: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    default = [n for n in known if n not in PHOTO_COLUMNS or inputs.photos]
    wanted = list(dict.fromkeys(["coordinates", *(names if names is not None else default)]))
    matchers: dict[str, Matcher] = {}
    unavailable: dict[str, str] = {}
    for name in wanted:
        try:
            matchers[name] = _BUILDERS.get(name, default_builder(name))(inputs)
        except BrokenInput:
            raise
        except UserError as exc:
            if names is not None or name in ALWAYS_LISTED:
                unavailable[name] = exc.message
    if "coordinates" not in matchers and not inputs.photos:
        raise UserError(unavailable["coordinates"])
    return Columns([n for n in wanted if n in matchers or n in unavailable], matchers, unavailable)
