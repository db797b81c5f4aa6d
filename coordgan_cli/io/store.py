"""The HDF5 correspondence store — one layout shared by synth, invert, propagate and evaluate.

Layout version 1 (README "File formats"; extra datasets are allowed):

- file attributes: ``format`` = "coordgan.correspondence", ``version`` = 1, ``size`` = [H, W],
  ``source`` = "ground-truth" | "model", ``complete`` = number of finished rows, and for model
  stores ``checkpoint_sha256`` and ``config`` (JSON text);
- ``names`` (N,) UTF-8 strings (fixed length, 1024 bytes): each image's path relative to its
  input folder, POSIX, unique;
- ``correspondence`` (N, 2, H, W) float16/float32, one chunk per image, gzip-compressed:
  channel 0 = canonical x (across columns), channel 1 = canonical y (down rows), in [-1, 1];
- optional ``valid`` (N, H, W) bool, ``structure`` (N, D), ``texture`` (N, L, D),
  ``labels`` (N, H, W) uint8, ``confidence`` (N, H, W) float16.

Rows are written in order and ``complete`` is raised only after a row is fully written and
flushed, so a killed writer leaves a readable store and a new writer continues from ``complete``.
Any HDF5 reader opens it: ``h5py.File(p)["correspondence"][i]``. Readers open it read-only, so
several of them (``propagate``, ``evaluate``, ``train-matcher``) can share one store at once.

``LabelsWriter`` writes the labels a run derived from a store into a file of its own (``propagate``'s
``OUT/labels.h5``: ``names``, ``labels``, ``confidence`` as above, ``format`` =
"coordgan.labels-store"), so an input store is never modified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Sequence

import h5py
import numpy as np

from coordgan_cli.errors import UserError

FORMAT = "coordgan.correspondence"
VERSION = 1
SOURCES = ("ground-truth", "model")
# Names are fixed-length UTF-8 with one name per compressed chunk. Variable-length strings live
# in HDF5's global heap, which a writer killed mid-append can leave corrupt ("bad heap index"),
# and a compressed chunk shared by several rows is rewritten (and moved) on every append, which
# a kill can leave unreadable; a chunk per row is written once and never touched again, like the
# maps themselves. Both failures were seen under repeated kill -9 before this layout.
NAME_BYTES = 1024
_STR = h5py.string_dtype(encoding="utf-8", length=NAME_BYTES)
_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}


def _row_dataset(f: h5py.File, name: str, row_shape: tuple[int, ...], dtype: Any, rows: int = 0) -> h5py.Dataset:
    return f.create_dataset(
        name, shape=(rows, *row_shape), maxshape=(None, *row_shape), dtype=dtype, chunks=(1, *row_shape), **_COMPRESSION
    )


class StoreWriter:
    """Append rows to a store, creating it or resuming an unfinished one.

    Args:
        path: the ``.h5`` file.
        size: (H, W) of every stored map.
        source: "ground-truth" or "model".
        dtype: "float16" (half the disk) or "float32" for ``correspondence``.
        with_valid: also store a per-pixel ``valid`` mask.
        config_json, checkpoint_sha256: provenance for model stores.
        structure_dim: store ``structure`` codes of this size.
        texture_shape: store ``texture`` codes of shape (L, D).
        overwrite: start afresh even if a store exists.

    An existing store with the same layout is resumed: rows past ``complete`` (a write cut short)
    are dropped. An existing file with another layout is a UserError unless ``overwrite``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        size: tuple[int, int],
        source: Literal["ground-truth", "model"],
        dtype: Literal["float16", "float32"] = "float16",
        with_valid: bool = False,
        config_json: str | None = None,
        checkpoint_sha256: str | None = None,
        structure_dim: int | None = None,
        texture_shape: tuple[int, int] | None = None,
        overwrite: bool = False,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        h, w = self.size
        optional: dict[str, tuple[tuple[int, ...], Any]] = {}
        if with_valid:
            optional["valid"] = ((h, w), np.bool_)
        if structure_dim is not None:
            optional["structure"] = ((int(structure_dim),), np.float32)
        if texture_shape is not None:
            optional["texture"] = (tuple(int(v) for v in texture_shape), np.float32)
        self._optional = optional
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not overwrite:
            self._file = self._reopen(dtype)
        else:
            self._file = self._create(dtype, source, config_json, checkpoint_sha256)
        self._names_seen = set(self.names)

    def _create(self, dtype: str, source: str, config_json: str | None, sha: str | None) -> h5py.File:
        f = h5py.File(self.path, "w")
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["size"] = np.asarray(self.size, dtype=np.int64)
        f.attrs["source"] = source
        f.attrs["complete"] = 0
        if config_json is not None:
            f.attrs["config"] = config_json
        if sha is not None:
            f.attrs["checkpoint_sha256"] = sha
        f.create_dataset("names", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1,), **_COMPRESSION)
        _row_dataset(f, "correspondence", (2, *self.size), np.dtype(dtype))
        for name, (shape, dt) in self._optional.items():
            _row_dataset(f, name, shape, dt)
        f.flush()
        return f

    def _reopen(self, dtype: str) -> h5py.File:
        _check_layout(self.path)
        f = h5py.File(self.path, "r+")
        stored = tuple(int(v) for v in f.attrs["size"])
        problems = []
        if stored != self.size:
            problems.append(f"size {list(stored)} (wanted {list(self.size)})")
        if f["correspondence"].dtype != np.dtype(dtype):
            problems.append(f"dtype {f['correspondence'].dtype} (wanted {dtype})")
        for name in self._optional:
            if name not in f:
                problems.append(f"no '{name}' dataset")
        if problems:
            f.close()
            raise UserError(
                f"{self.path}: an existing store has another layout ({'; '.join(problems)}); "
                "remove it or choose another output"
            )
        complete = int(f.attrs["complete"])
        # Drop anything written past the last finished row by an interrupted writer.
        for name in ["names", "correspondence", *self._optional]:
            if f[name].shape[0] != complete:
                f[name].resize(complete, axis=0)
        return f

    @property
    def complete(self) -> int:
        return int(self._file.attrs["complete"])

    @property
    def names(self) -> list[str]:
        return [_decode(n) for n in self._file["names"][: self.complete]]

    def append(
        self,
        name: str,
        correspondence: np.ndarray,
        *,
        valid: np.ndarray | None = None,
        structure: np.ndarray | None = None,
        texture: np.ndarray | None = None,
    ) -> int:
        """Write one finished row; returns its index. ``name`` must be new to the store."""
        if name in self._names_seen:
            raise ValueError(f"{self.path}: duplicate name {name!r}")
        if len(name.encode("utf-8")) > NAME_BYTES:
            raise UserError(f"{name[:60]}…: a relative path longer than {NAME_BYTES} bytes cannot be stored in {self.path}")
        corr = np.asarray(correspondence)
        if corr.shape != (2, *self.size):
            raise ValueError(f"correspondence must have shape {(2, *self.size)}, got {corr.shape}")
        extras = {"valid": valid, "structure": structure, "texture": texture}
        for key, value in extras.items():
            if (value is None) != (key not in self._optional):
                raise ValueError(f"{key!r} must be given exactly when the store was created with it")
        f = self._file
        i = self.complete
        for ds_name in ["names", "correspondence", *self._optional]:
            f[ds_name].resize(i + 1, axis=0)
        f["names"][i] = name
        f["correspondence"][i] = corr.astype(f["correspondence"].dtype, copy=False)
        for key in self._optional:
            f[key][i] = np.asarray(extras[key])
        f.flush()
        f.attrs["complete"] = i + 1  # only now is the row part of the store
        f.flush()
        self._names_seen.add(name)
        return i

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_layout(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path}: correspondence store not found")
    try:
        with h5py.File(path, "r") as f:
            fmt = _decode(f.attrs.get("format", ""))
            if fmt != FORMAT:
                raise UserError(f"{path}: not a coordgan correspondence store (format attribute {fmt!r})")
            version = int(f.attrs.get("version", -1))
            if version != VERSION:
                raise UserError(f"{path}: store layout version {version} is not supported (this toolkit reads {VERSION})")
            missing = [k for k in ("names", "correspondence") if k not in f]
            missing += [f"attribute {a}" for a in ("size", "complete") if a not in f.attrs]
            if missing:
                raise UserError(f"{path}: malformed store, missing {', '.join(missing)}")
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise UserError(f"{path}: another program is writing this store (HDF5 file lock); wait until it "
                            "finishes, or read a copy") from exc
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from exc


class StoreReader:
    """Read (and, with mode "r+", annotate) a store. Only finished rows are visible. The default
    mode "r" never changes the file, and any number of readers may hold it open at once."""

    def __init__(self, path: str | Path, mode: Literal["r", "r+"] = "r") -> None:
        self.path = Path(path)
        _check_layout(self.path)
        self._file = h5py.File(self.path, mode)
        self.size: tuple[int, int] = tuple(int(v) for v in self._file.attrs["size"])  # type: ignore[assignment]
        self._complete = int(self._file.attrs["complete"])
        self.names: list[str] = [_decode(n) for n in self._file["names"][: self._complete]]
        self._index: dict[str, int] | None = None

    @property
    def source(self) -> str:
        return _decode(self._file.attrs.get("source", ""))

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (_decode(v) if isinstance(v, (bytes, str)) else v) for k, v in self._file.attrs.items()}

    @property
    def config(self) -> dict | None:
        text = self._file.attrs.get("config")
        return json.loads(_decode(text)) if text is not None else None

    def __len__(self) -> int:
        return self._complete

    def __contains__(self, name: str) -> bool:
        return name in self._lookup()

    def _lookup(self) -> dict[str, int]:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.names)}
        return self._index

    def index(self, name: str) -> int:
        try:
            return self._lookup()[name]
        except KeyError:
            raise UserError(f"{self.path}: no map named {name!r} in the store ({len(self)} names)") from None

    def has(self, dataset: str) -> bool:
        return dataset in self._file

    def read(self, dataset: str, i: int) -> np.ndarray:
        if not 0 <= i < self._complete:
            raise IndexError(f"row {i} is not a finished row of {self.path}")
        return self._file[dataset][i]

    def correspondence(self, i: int) -> np.ndarray:
        """(2, H, W) float32 canonical (x, y)."""
        return self.read("correspondence", i).astype(np.float32)

    def valid(self, i: int) -> np.ndarray | None:
        """(H, W) bool, or None when the store has no ``valid`` dataset."""
        return self.read("valid", i).astype(bool) if self.has("valid") else None

    def put(self, dataset: str, i: int, array: np.ndarray) -> None:
        """Write one row of a per-row dataset (e.g. ``labels``, ``confidence``), creating it if needed."""
        array = np.asarray(array)
        if dataset not in self._file:
            _row_dataset(self._file, dataset, array.shape, array.dtype, rows=self._file["correspondence"].shape[0])
        ds = self._file[dataset]
        if ds.shape[0] < self._complete:
            ds.resize(self._complete, axis=0)
        ds[i] = array
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


LABELS_FORMAT = "coordgan.labels-store"


class LabelsWriter:
    """Per-image labels and confidence derived from a store's maps, in a file of their own.

    Layout (the store's, ``labels``/``confidence`` without ``correspondence``): attributes
    ``format`` = "coordgan.labels-store", ``version`` = 1, ``size`` = [H, W], ``complete``,
    ``store`` (the maps' store); ``names`` (N,) as the store's names; ``labels`` (N, H, W) uint8;
    ``confidence`` (N, H, W) float16; one gzip chunk per row. Writing a name already present
    overwrites its row (a rerun after a kill redoes the query it was on); an existing file is
    resumed from ``complete``.
    """

    def __init__(self, path: str | Path, *, size: tuple[int, int], store: str | Path) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        if self.path.exists():
            self._file = self._reopen()
        else:
            f = h5py.File(self.path, "w")
            f.attrs["format"] = LABELS_FORMAT
            f.attrs["version"] = VERSION
            f.attrs["size"] = np.asarray(self.size, dtype=np.int64)
            f.attrs["complete"] = 0
            f.attrs["store"] = str(store)
            f.create_dataset("names", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1,), **_COMPRESSION)
            _row_dataset(f, "labels", self.size, np.uint8)
            _row_dataset(f, "confidence", self.size, np.float16)
            f.flush()
            self._file = f
        complete = int(self._file.attrs["complete"])
        self._rows = {_decode(n): i for i, n in enumerate(self._file["names"][:complete])}

    def _reopen(self) -> h5py.File:
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:
            raise UserError(f"{self.path}: not a readable HDF5 file ({exc}); remove it or use a new --out") from exc
        stored = tuple(int(v) for v in f.attrs.get("size", ()))
        if _decode(f.attrs.get("format", "")) != LABELS_FORMAT or stored != self.size:
            f.close()
            raise UserError(f"{self.path}: holds labels of another layout (size {list(stored)}, wanted "
                            f"{list(self.size)}); remove it or use a new --out")
        complete = int(f.attrs["complete"])
        for name in ("names", "labels", "confidence"):
            if f[name].shape[0] != complete:  # a row cut short by a kill
                f[name].resize(complete, axis=0)
        return f

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, name: str, labels: np.ndarray, confidence: np.ndarray) -> int:
        """Write ``name``'s (H, W) labels and confidence; returns its row."""
        if labels.shape != self.size or confidence.shape != self.size:
            raise ValueError(f"labels/confidence must be {self.size}, got {labels.shape}/{confidence.shape}")
        f = self._file
        row = self._rows.get(name)
        if row is None:
            row = int(f.attrs["complete"])
            for ds in ("names", "labels", "confidence"):
                f[ds].resize(row + 1, axis=0)
            f["names"][row] = name
        f["labels"][row] = np.asarray(labels, dtype=np.uint8)
        f["confidence"][row] = np.asarray(confidence).astype(np.float16)
        f.flush()
        if name not in self._rows:
            f.attrs["complete"] = row + 1
            f.flush()
            self._rows[name] = row
        return row

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "LabelsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def copy_rows(sources: Sequence[str | Path], out: str | Path) -> int:
    """Concatenate stores with equal layouts into ``out`` (used to merge shards); returns rows."""
    readers = [StoreReader(p) for p in sources]
    try:
        first = readers[0]
        for r in readers[1:]:
            if r.size != first.size or r.source != first.source:
                raise UserError(f"{r.path}: size/source differ from {first.path}; shards must share a layout")
        with h5py.File(first.path, "r") as f0:
            dtype = str(f0["correspondence"].dtype)
            optional = {k: f0[k].shape[1:] for k in f0 if k not in ("names", "correspondence")}
        attrs = first.attrs
        writer = StoreWriter(
            out, size=first.size, source=first.source, dtype=dtype,  # type: ignore[arg-type]
            with_valid="valid" in optional, config_json=attrs.get("config"),
            checkpoint_sha256=attrs.get("checkpoint_sha256"),
            structure_dim=optional["structure"][0] if "structure" in optional else None,
            texture_shape=tuple(optional["texture"]) if "texture" in optional else None,  # type: ignore[arg-type]
            overwrite=True,
        )
        with writer:
            for r in readers:
                for i, name in enumerate(r.names):
                    if name in writer._names_seen:
                        raise UserError(f"{r.path}: name {name!r} appears in more than one shard")
                    writer.append(
                        name, r.read("correspondence", i),
                        valid=r.read("valid", i) if "valid" in writer._optional else None,
                        structure=r.read("structure", i) if "structure" in writer._optional else None,
                        texture=r.read("texture", i) if "texture" in writer._optional else None,
                    )
            return writer.complete
    finally:
        for r in readers:
            r.close()
