"""Matchers: how a query image gets its per-pixel class probabilities from the references.

A matcher is fitted once on the ``References`` (encode / cache them there, not per query), then
asked about one query at a time. The contract (``Matcher``) is small:

* ``name`` — the registry name, recorded in the resume key, the summary and the report;
* ``fit(references)``;
* ``predict_proba(image, *, name=None) -> (probs (K, H, W) float32 over references.classes,
  confidence (H, W) float32)`` at the image's own size (``name``: the query's relative name, for
  matchers that look maps up in a store);
* ``predict(image) -> (labels (H, W) uint8 label ids, confidence (H, W) float32)``, NumPy or PIL in.

``MatcherBase`` gives ``predict`` (and the richer ``label``) from ``predict_proba``. Optional hooks
the ``Propagator`` uses when present: ``label(image, *, name) -> Prediction`` (labels computed
otherwise than as the argmax of the probabilities, e.g. the exact coordinate vote, plus the query's
correspondence map for keypoints; an ``only`` (H, W) bool mask, when given, names the pixels whose
labels the caller will look at — evaluation passes the scored pixels — and a matcher may leave the
others background), ``settings()`` (what the resume key records), ``reference_maps``
(keypoint transfer), ``store_entry(prediction)`` (the query's store name and map size, for
``OUT/labels.h5``) and ``close()``. Stores are opened read-only: a matcher never writes its inputs.

New matchers plug in with ``register_matcher(name, factory)``; ``make_matcher(name, **options)``
builds one (``coordgan propagate --matcher NAME`` and ``label_folder(..., matcher=NAME)``).
Nothing here imports torch at module import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol, runtime_checkable

import numpy as np

from coordgan_cli.errors import UserError
from coordgan_cli.labelling.references import References, as_rgb, name_candidates, resize_nearest


@runtime_checkable
class Matcher(Protocol):
    name: str

    def fit(self, references: References) -> None: ...

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, image: Any) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class Prediction:
    """One query's result: labels (H, W) uint8 ids, confidence (H, W) float32, and what some
    matchers also know: the class probabilities (K, H, W), the query's correspondence map (2, H, W)
    with its valid pixels (keypoint transfer) and its store row (its labels go to OUT/labels.h5)."""

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: Optional[np.ndarray] = None
    correspondence: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None
    store_row: Optional[int] = None


class MatcherBase:
    """Gives ``fit`` (keeps the references), ``label`` and ``predict`` from ``predict_proba``."""

    name = "matcher"
    references: Optional[References] = None
    # Progress over fit's per-reference work, ``track(items, total) -> items`` (the Propagator sets
    # it when asked to show progress); a matcher with slow per-reference work iterates through it.
    track_references: Callable[[Iterable[Any], int], Iterable[Any]] = staticmethod(lambda items, total: items)

    def fit(self, references: References) -> None:
        self.references = references

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def label(self, image: np.ndarray, *, name: Optional[str] = None,
              only: Optional[np.ndarray] = None) -> Prediction:
        probs, confidence = self.predict_proba(image, name=name)
        classes = np.asarray(self._fitted().classes)
        return Prediction(classes[probs.argmax(axis=0)].astype(np.uint8), confidence.astype(np.float32), probs)

    def predict(self, image: Any, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        prediction = self.label(as_rgb(image), name=name)
        return prediction.labels, prediction.confidence

    def settings(self) -> dict[str, Any]:
        return {"matcher": self.name}

    def close(self) -> None:
        pass

    def _fitted(self) -> References:
        if self.references is None:
            raise RuntimeError(f"matcher {self.name!r}: call fit(references) before predicting")
        return self.references


def restrict(valid: Optional[np.ndarray], only: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The pixels to vote on: the map's valid pixels that the caller asks about (either may be None)."""
    if only is None or valid is None:
        return valid if only is None else only
    return valid & only


def winning_share(probs: np.ndarray) -> np.ndarray:
    """Confidence of a (K, H, W) distribution: the winning class's share, in [0, 1]."""
    return np.clip(probs.max(axis=0), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Registry

_FACTORIES: dict[str, Callable[..., Matcher]] = {}


def register_matcher(name: str, factory: Callable[..., Matcher]) -> None:
    """Make ``make_matcher(name, **options)`` (and ``--matcher name``) build ``factory(**options)``."""
    _FACTORIES[name] = factory


def available_matchers() -> list[str]:
    return list(_FACTORIES)


def matcher_factory(name: str) -> Callable[..., Matcher]:
    """The factory registered under ``name`` (KeyError when none is)."""
    return _FACTORIES[name]


def make_matcher(name: str, **options: Any) -> Matcher:
    """A new matcher by registry name; options go to its factory."""
    if name not in _FACTORIES:
        raise UserError(f"--matcher must be one of {', '.join(_FACTORIES)}, got {name!r}")
    return _FACTORIES[name](**options)


# ---------------------------------------------------------------------------------------------
# Correspondence maps (store or model) and the coordinate vote


def resample_map(correspondence: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resample of a (2, h, w) map to (2, H, W) (pixel centres aligned)."""
    import cv2

    if correspondence.shape[1:] == tuple(size):
        return correspondence
    return np.stack([cv2.resize(np.ascontiguousarray(c, dtype=np.float32), (size[1], size[0]),
                                interpolation=cv2.INTER_LINEAR) for c in correspondence])


class MapSource:
    """Correspondence maps from a store (by name) or from a model (structure path)."""

    def __init__(self, store: Optional[Path], ckpt: Optional[Path], device: Any) -> None:
        self.store_path, self.reader, self.model = store, None, None
        if store is not None:
            from coordgan_cli.io.store import StoreReader

            if not Path(store).is_file():
                raise UserError(f"{store}: --store file not found")
            self.reader = StoreReader(store)  # read-only: the store is an input, shared by other readers
        else:
            from coordgan_cli.inference import load_correspondence_model

            if ckpt is None:
                raise UserError("no correspondence maps: pass --store maps.h5 (e.g. from `coordgan invert` or "
                                "`coordgan synth`) or --ckpt with an encoder checkpoint")
            self.model = load_correspondence_model(ckpt, device)

    def store_name(self, candidates: list[str], what: str) -> str:
        for name in candidates:
            if name in self.reader:
                return name
        raise UserError(f"{self.store_path}: {what} is not in the store (looked for "
                        f"{' or '.join(repr(c) for c in dict.fromkeys(candidates))})")

    def maps(self, image: np.ndarray, candidates: list[str], size: tuple[int, int], what: str, *, query: bool = False
             ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[int]]:
        """(map (2, H, W) at ``size``, valid (H, W) | None, store row | None); ``query``: asked for a
        query (True) or a reference (False) — the same here."""
        if self.reader is not None:
            row = self.reader.index(self.store_name(candidates, what))
            cmap = resample_map(self.reader.correspondence(row), size)
            valid = self.reader.valid(row)
            if valid is not None and valid.shape != tuple(size):
                valid = resize_nearest(valid.astype(np.uint8), size).astype(bool)
            return cmap, valid, row
        return self.model.correspondence_maps([image], [size])[0], None, None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class CoordinatesMatcher(MatcherBase):
    """Vote in canonical-coordinate space (``correspondence.vote``) on maps from a store or a model.

    store: a correspondence store holding queries and references by relative name (opened
    read-only); else ckpt: an encoder checkpoint, run on ``device``; or maps: any object with
    ``MapSource``'s ``maps(image, candidates, size, what, *, query)`` and ``close()`` (``coordgan
    evaluate`` gives the benchmark's maps this way).
    mode: soft (τ-weighted vote) | hard (nearest); tau: None = 0.01 × 128 / S for references of
    side S. ``label`` gives the exact vote; ``predict_proba`` the class shares (refined to
    ``ENSEMBLE_TOL``), whose argmax can differ from the exact labels at near ties.
    """

    name = "coordinates"

    def __init__(self, *, store: Optional[Path] = None, ckpt: Optional[Path] = None, device: Any = None,
                 mode: str = "soft", tau: Optional[float] = None, maps: Any = None) -> None:
        if mode not in ("soft", "hard"):
            raise UserError(f"--mode must be soft or hard, got {mode!r}")
        if tau is not None and not tau > 0:
            raise UserError(f"--tau must be positive, got {tau}")
        self.store, self.ckpt, self.mode, self.tau = store, ckpt, mode, tau
        self.source = maps if maps is not None else MapSource(store, ckpt, device or "cpu")
        self.reference_maps: list[np.ndarray] = []
        self.prepared: list[Any] = []

    def fit(self, references: References) -> None:
        from coordgan_cli.correspondence.vote import prepare_references, reference_points, resolution_tau

        self.references = references
        if self.tau is None:
            self.tau = resolution_tau(references.side)
        self.reference_maps = []
        points = []
        items = list(zip(references.images, references.masks, references.paths, references.store_names))
        for image, mask, path, candidates in self.track_references(items, len(items)):
            what = f"reference {path.name if path is not None else candidates[0]}"
            cmap, valid, _ = self.source.maps(image, candidates, image.shape[:2], what)
            self.reference_maps.append(cmap)
            points.append(reference_points(cmap, mask, valid))
        self.prepared = prepare_references(points, references.num_classes, self.tau)

    def query_maps(self, image: np.ndarray, name: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray], Optional[int]]:
        if getattr(self.source, "reader", None) is not None and name is None:
            raise UserError(f"{self.store}: maps come from the store, so the query needs its name (name=...)")
        return self.source.maps(image, name_candidates(name) if name else [], image.shape[:2], f"query {name}",
                                query=True)

    def proba_from_map(self, cmap: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
        from coordgan_cli.correspondence.ensemble import coordinate_probabilities

        probs, _ = coordinate_probabilities(cmap, self.prepared, self._fitted().num_classes, query_valid=valid,
                                            tau=self.tau, mode=self.mode)
        return probs

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        cmap, valid, _ = self.query_maps(image, name)
        probs = self.proba_from_map(cmap, valid)
        return probs, winning_share(probs)

    def label(self, image: np.ndarray, *, name: Optional[str] = None,
              only: Optional[np.ndarray] = None) -> Prediction:
        from coordgan_cli.correspondence.vote import propagate_map

        cmap, valid, row = self.query_maps(image, name)
        labels, confidence, _ = propagate_map(cmap, self.prepared, self._fitted().num_classes,
                                              query_valid=restrict(valid, only), tau=self.tau, mode=self.mode)
        return Prediction(labels, confidence, None, cmap, valid, row)

    def maps_setting(self) -> str:
        if self.store is None and self.ckpt is None:
            return str(getattr(self.source, "label", "maps given"))
        return str(Path(self.store).resolve()) if self.store is not None else str(Path(self.ckpt).resolve())

    def settings(self) -> dict[str, Any]:
        return {"matcher": self.name, "mode": self.mode, "tau": self.tau, "maps": self.maps_setting()}

    def store_entry(self, prediction: Prediction) -> Optional[tuple[str, tuple[int, int], Path]]:
        """(the query's name in the store, the store's map size (H, W), the store) when its maps
        came from a store, else None."""
        reader = getattr(self.source, "reader", None)
        if reader is None or prediction.store_row is None:
            return None
        return reader.names[prediction.store_row], tuple(reader.size), Path(self.store)  # type: ignore[return-value]

    def close(self) -> None:
        self.source.close()


# ---------------------------------------------------------------------------------------------
# Feature correlation and the ensemble


class CorrelationMatcher(MatcherBase):
    """A trained feature matcher's CoCosNet correlation (``correspondence.correlation``); the
    references' features are pooled once in ``fit``. matcher_ckpt: None = the shipped matcher."""

    name = "correlation"

    def __init__(self, *, matcher_ckpt: Optional[Path] = None, device: Any = None,
                 work_size: Optional[int] = None) -> None:
        import torch

        from coordgan_cli.inference import resolve_matcher
        from coordgan_cli.io.checkpoint import file_sha256
        from coordgan_cli.training.matcher import load_matcher, matcher_work_size

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        path = resolve_matcher(matcher_ckpt)
        self.network, self.config = load_matcher(path, self.device)
        self.sha256 = file_sha256(path)
        # The shorter side the matcher sees (None: each image's own size): --work-size, the recipe's
        # matcher.work_size, else the size it was trained at.
        self.work_size = matcher_work_size(path, self.config, work_size)
        self.prepared = None

    def fit(self, references: References) -> None:
        from coordgan_cli.correspondence.correlation import prepare_correlation_references

        self.references = references
        pairs = list(zip(references.images, references.masks))
        # Iterated once, so the progress advances as each reference's features are computed.
        self.prepared = prepare_correlation_references(
            self.track_references(pairs, len(pairs)), self.network, references.num_classes,  # type: ignore[arg-type]
            device=self.device, patch=self.config.patch, work_size=self.work_size)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) query → (K, H, W) float32 warped one-hot reference labels."""
        from coordgan_cli.correspondence.correlation import correlation_probabilities

        self._fitted()
        probabilities = correlation_probabilities(image, self.prepared, self.network, tau=self.config.tau,
                                                  k=self.config.k, device=self.device, patch=self.config.patch,
                                                  work_size=self.work_size)
        return probabilities.float().cpu().numpy()

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        probs = self.probabilities(image)
        return probs, winning_share(probs)

    def settings(self) -> dict[str, Any]:
        settings = {"matcher": self.name, "matcher_sha256": self.sha256}
        if self.work_size is not None:
            settings["work_size"] = self.work_size
        return settings


class EnsembleMatcher(MatcherBase):
    """The plain average of its members' class probabilities (``correspondence.ensemble``); label =
    argmax, confidence = the winning share. Default members: the coordinate vote (options ``store``,
    ``ckpt``, ``mode``, ``tau``) and the correlation (``matcher_ckpt``); or pass ``members``."""

    name = "ensemble"

    def __init__(self, *, members: Optional[list[Matcher]] = None, store: Optional[Path] = None,
                 ckpt: Optional[Path] = None, matcher_ckpt: Optional[Path] = None, device: Any = None,
                 mode: str = "soft", tau: Optional[float] = None, work_size: Optional[int] = None) -> None:
        if members is None:
            correlation = CorrelationMatcher(matcher_ckpt=matcher_ckpt, device=device, work_size=work_size)
            coordinates = CoordinatesMatcher(store=store, ckpt=ckpt, device=device, mode=mode, tau=tau)
            members = [coordinates, correlation]
        self.members = members
        self.maps = next((m for m in members if isinstance(m, CoordinatesMatcher)), None)

    @property
    def reference_maps(self) -> Optional[list[np.ndarray]]:
        return self.maps.reference_maps if self.maps is not None else None

    def fit(self, references: References) -> None:
        self.references = references
        for member in self.members:
            if hasattr(member, "track_references"):
                member.track_references = self.track_references  # type: ignore[union-attr]
            member.fit(references)

    def label(self, image: np.ndarray, *, name: Optional[str] = None,
              only: Optional[np.ndarray] = None) -> Prediction:
        from coordgan_cli.correspondence.ensemble import fuse_probabilities

        self._fitted()
        probs, cmap, valid, row = [], None, None, None
        for member in self.members:
            if member is self.maps:
                cmap, valid, row = member.query_maps(image, name)
                probs.append(member.proba_from_map(cmap, restrict(valid, only)))
            else:
                probs.append(member.predict_proba(image, name=name)[0])
        labels, confidence, mean = fuse_probabilities(*probs)
        return Prediction(labels, confidence, mean, cmap, valid, row)

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        prediction = self.label(image, name=name)
        return prediction.probabilities, prediction.confidence

    def settings(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for member in self.members:
            merged.update(getattr(member, "settings", lambda: {})())
        return {**merged, "matcher": self.name}

    def store_entry(self, prediction: Prediction) -> Optional[tuple[str, tuple[int, int], Path]]:
        return self.maps.store_entry(prediction) if self.maps is not None else None

    def close(self) -> None:
        for member in self.members:
            getattr(member, "close", lambda: None)()


def auto_matcher(store: Optional[Path], ckpt: Optional[Path], model: Optional[str],
                 matcher_ckpt: Optional[Path]) -> tuple[str, str]:
    """``--matcher auto``: (matcher, why). CoordGAN maps given → coordinates (plus --matcher-ckpt →
    ensemble); only a feature matcher checkpoint → correlation; nothing → features, the best
    measured on real photos (README "Real photos") and needing nothing but the shipped Inception."""
    maps = next((f"--{k}" for k, v in (("store", store), ("ckpt", ckpt), ("model", model)) if v is not None), None)
    if maps and matcher_ckpt is not None:
        return "ensemble", f"{maps} gives CoordGAN maps and --matcher-ckpt a feature matcher"
    if maps:
        return "coordinates", f"{maps} gives CoordGAN maps"
    if matcher_ckpt is not None:
        return "correlation", "--matcher-ckpt gives a trained feature matcher and no maps are given"
    return "features", ("no CoordGAN maps or matcher given: the pretrained-backbone vote, the best on real photos; "
                        "--matcher classifier is the other photo matcher")


register_matcher("coordinates", CoordinatesMatcher)
register_matcher("correlation", CorrelationMatcher)
register_matcher("ensemble", EnsembleMatcher)

# The pretrained-backbone matchers register themselves ("features", "classifier"); lazy, no torch.
from coordgan_cli.labelling import pretrained  # noqa: E402,F401
