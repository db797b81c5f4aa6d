"""Correspondence maps of a benchmark's images: from an HDF5 store or from a model, and the same
maps handed to the labelling core's ``CoordinatesMatcher`` (``BenchmarkMaps``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from coordgan_cli.data.benchmarks import Sample
from coordgan_cli.errors import UserError
from coordgan_cli.metrics.protocol import resize_labels_nearest, resize_map


class StoreMaps:
    """Correspondence maps looked up by name in an HDF5 store (DESIGN §5), resampled on demand."""

    def __init__(self, path: Path) -> None:
        from coordgan_cli.io.store import StoreReader

        self.path = path
        self.reader = StoreReader(path)
        self._rows: dict[str, int] = {}

    def row(self, sample: Sample) -> int:
        if sample.name not in self._rows:
            for key in sample.keys or (sample.name,):
                if key in self.reader:
                    self._rows[sample.name] = self.reader.index(key)
                    break
            else:
                raise UserError(f"{self.path}: no map for {sample.name} (looked up as "
                                f"{', '.join(repr(k) for k in sample.keys)})")
        return self._rows[sample.name]

    def check(self, samples: list[Sample]) -> None:
        """One message naming every sample the store lacks."""
        missing = [s.name for s in samples if not any(k in self.reader for k in (s.keys or (s.name,)))]
        if missing:
            shown = ", ".join(missing[:10]) + (f" … and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise UserError(f"{self.path}: the store has no map for {len(missing)} benchmark image(s): {shown} "
                            f"(its {len(self.reader)} names look like {', '.join(self.reader.names[:3])})")

    def map(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        return resize_map(self.reader.correspondence(self.row(sample)), tuple(size))

    def valid(self, sample: Sample, size: tuple[int, int]) -> Optional[np.ndarray]:
        v = self.reader.valid(self.row(sample))
        if v is None:
            return None
        return resize_labels_nearest(v.astype(np.uint8), tuple(size)).astype(bool)

    def native_size(self, sample: Sample) -> tuple[int, int]:
        return tuple(self.reader.size)  # type: ignore[return-value]

    def close(self) -> None:
        self.reader.close()


class IdentityMaps:
    """The trivial maps: every image's map is its own pixel grid in canonical units (x, y from -1
    to +1), so a point transfers to the same pixel. The floor a model's PCK has to beat: on
    roughly aligned images (a centred face) it is already high."""

    def map(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        from coordgan_cli.models.warp import canonical_grid_map

        return canonical_grid_map(int(size[0]), int(size[1]))[0].numpy()

    def valid(self, sample: Sample, size: tuple[int, int]) -> Optional[np.ndarray]:
        return None

    def close(self) -> None:
        pass


class ModelMaps:
    """Correspondence maps (structure path + warp MLP) and encoder features of a loaded
    ``inference.CorrespondenceModel`` (an encoder checkpoint), cached per image and size."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._maps: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        self._feats: dict[str, np.ndarray] = {}

    def _image(self, sample: Sample) -> np.ndarray:
        from coordgan_cli.io.images import read_image

        return read_image(sample.image)

    def map(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        key = (sample.name, tuple(int(v) for v in size))
        if key not in self._maps:
            self._maps[key] = self.model.correspondence_maps([self._image(sample)], [key[1]])[0]
        return self._maps[key]

    def valid(self, sample: Sample, size: tuple[int, int]) -> Optional[np.ndarray]:
        return None

    def features(self, sample: Sample) -> np.ndarray:
        if sample.name not in self._feats:
            self._feats[sample.name] = self.model.features([self._image(sample)])[0]
        return self._feats[sample.name]

    def close(self) -> None:
        pass


MapsOfSamples = Union[StoreMaps, ModelMaps]


class BenchmarkMaps:
    """A benchmark's maps in the shape ``labelling.CoordinatesMatcher(maps=...)`` asks for: looked
    up by the sample's name (the first candidate), resampled as the protocols always did
    (``metrics.protocol.resize_map``). A reference keeps its store ``valid`` mask; a query's is
    not used — the protocols vote on every scored query pixel."""

    def __init__(self, source: MapsOfSamples, samples: Sequence[Sample], label: str) -> None:
        self.source, self.label = source, label
        self.samples = {s.name: s for s in samples}
        self.reader = None  # no store rows (nothing for a labels file)

    def maps(self, image: np.ndarray, candidates: list[str], size: tuple[int, int], what: str, *, query: bool = False
             ) -> tuple[np.ndarray, Optional[np.ndarray], None]:
        sample = next((self.samples[c] for c in candidates if c in self.samples), None)
        if sample is None:
            raise UserError(f"{what}: not an image of this benchmark")
        cmap = self.source.map(sample, tuple(size))
        return cmap, None if query else self.source.valid(sample, tuple(size)), None

    def close(self) -> None:
        pass  # the source is closed by whoever opened it
