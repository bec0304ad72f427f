"""The pairs store: training pairs in one Zarr v3 group, written chunk by chunk, read whole.

Arrays (N points; shapes and meaning as in ``encoder.pairs``)::

    series, month_mask, ground, photo_mask, point_id, lon, lat
    labels/<task>  (N,) int16    class index of the built-in class set, -1 = unknown
    raw/<field>    (N,) str      the label codes as read

Root attributes: ``format``, ``version``, ``bands``, ``months``, ``directions``, plus free-form
provenance (``source``, ``ground_model``...).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoder.ground import DIRECTIONS
from encoder.label_routes import RAW_FIELDS, TASKS, check_task
from encoder.pairs import MONTHS, Pairs, PairsError
from encoder.preprocess import BANDS

PAIRS_FORMAT = "timesenclip-pairs"
PAIRS_VERSION = 1


class PairsWriter:
    """Write a pairs store chunk by chunk into ``<path>.partial``, renamed onto ``path`` by close().

    Use as a context manager: on an exception the partial store is left for inspection and
    ``path`` is not touched.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_photos: int = len(DIRECTIONS),
        ground_dim: int,
        tasks: Sequence[str] = TASKS,
        attrs: Mapping[str, Any] | None = None,
        chunk: int = 4096,
        overwrite: bool = False,
    ) -> None:
        import zarr

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise PairsError(f"{self.path} already exists: choose a new path or pass overwrite")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.tasks = tuple(check_task(t) for t in tasks)
        g = zarr.open_group(self.partial, mode="w")
        g.attrs.update(
            {
                "format": PAIRS_FORMAT,
                "version": PAIRS_VERSION,
                "bands": list(BANDS),
                "months": MONTHS,
                "directions": list(DIRECTIONS[:n_photos]),
                "series_units": "L2A DN, pre-2022 scale (no BOA offset); NaN = no data",
                **(attrs or {}),
            }
        )
        specs = {
            "series": ((MONTHS, len(BANDS)), "float32"),
            "month_mask": ((MONTHS,), "bool"),
            "ground": ((n_photos, ground_dim), "float32"),
            "photo_mask": ((n_photos,), "bool"),
            "point_id": ((), str),
            "lon": ((), "float64"),
            "lat": ((), "float64"),
            **{f"labels/{t}": ((), "int16") for t in self.tasks},
            **{f"raw/{f}": ((), str) for f in RAW_FIELDS},
        }
        for name, (tail, dtype) in specs.items():
            g.create_array(name, shape=(0, *tail), chunks=(chunk, *tail), dtype=dtype)
        self.group = g
        self.count = 0

    def append(self, pairs: Pairs) -> None:
        if not (n := len(pairs)):
            return
        columns = {
            "series": pairs.series,
            "month_mask": pairs.month_mask,
            "ground": pairs.ground,
            "photo_mask": pairs.photo_mask,
            "point_id": pairs.point_id.astype(object),
            "lon": pairs.lon,
            "lat": pairs.lat,
            # Absent labels are unknown (-1), absent raw fields empty.
            **{f"labels/{t}": pairs.labels.get(t, np.full(n, -1, np.int16)) for t in self.tasks},
            **{f"raw/{f}": pairs.raw.get(f, np.full(n, "")).astype(object) for f in RAW_FIELDS},
        }
        expected = self.group["ground"].shape[1:]
        if pairs.ground.shape[1:] != expected:
            raise PairsError(
                f"ground embeddings of shape {pairs.ground.shape[1:]} do not fit this store's "
                f"{expected}: all points need the same photo count and embedding width"
            )
        for name, values in columns.items():
            self.group[name].append(values, axis=0)
        self.count += len(pairs)

    def close(self) -> Path:
        self.group.attrs["count"] = self.count
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)
        return self.path

    def __enter__(self) -> PairsWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()


def write_pairs(path: str | Path, pairs: Pairs, **kwargs: Any) -> Path:
    """Write in-memory ``pairs`` as one store (keyword arguments as for :class:`PairsWriter`)."""
    kwargs.setdefault("tasks", tuple(pairs.labels))
    with PairsWriter(
        path, n_photos=pairs.ground.shape[1], ground_dim=pairs.ground.shape[2], **kwargs
    ) as writer:
        writer.append(pairs)
    return Path(path)


def open_pairs(path: str | Path):
    """The Zarr group of a pairs store, after checking its format."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise PairsError(f"pairs store {path} does not exist")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for a non-store
        raise PairsError(f"{path} is not a Zarr group: {exc}") from exc
    if group.attrs.get("format") != PAIRS_FORMAT:
        raise PairsError(
            f"{path} is not a timesenclip pairs store (format {group.attrs.get('format')!r}); "
            "write one with encoder.sen4map.pairs_from_sen4map or pipeline.cube.samples"
        )
    return group


def read_pairs(path: str | Path, tasks: Sequence[str] | None = None) -> Pairs:
    """Load a whole pairs store into memory (``tasks``: the label arrays to load, default all)."""
    group = open_pairs(path)
    stored = tuple(group["labels"].array_keys())
    wanted = stored if tasks is None else tuple(check_task(t) for t in tasks)
    if missing := [t for t in wanted if t not in stored]:
        raise PairsError(f"{path} has no labels for {', '.join(missing)} (it has {stored})")

    def text(name: str) -> np.ndarray:
        return np.array(group[name][:].tolist(), dtype=str)  # zarr gives numpy StringDType

    return Pairs(
        text("point_id"),
        group["lon"][:],
        group["lat"][:],
        group["series"][:],
        group["month_mask"][:],
        group["ground"][:],
        group["photo_mask"][:],
        {t: group[f"labels/{t}"][:] for t in wanted},
        {f: text(f"raw/{f}") for f in group["raw"].array_keys()},
    )
