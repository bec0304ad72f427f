"""Training pairs: a Zarr store of pixel series, ground-photo embeddings, ids and task labels.

Store layout (one Zarr v3 group, N points, P photos per point, D embedding width)::

    series       (N, 12, 10) float32  L2A digital numbers, pre-2022 scale (no BOA offset),
                                      BANDS order; NaN = no valid observation that month
    month_mask   (N, 12)     bool     True = month present (all bands finite)
    ground       (N, P, D)   float32  raw CLIP image embeddings in W, E, N, S order; 0 = absent
    photo_mask   (N, P)      bool     True = photo present
    point_id     (N,)        str
    lon, lat     (N,)        float64  degrees (NaN = unknown)
    labels/<task> (N,)       int16    class index of the built-in class set, -1 = unknown
    raw/<field>  (N,)        str      the label codes as read (lc1, lu1, eunis, bioregion, country)

Root attributes: ``format``, ``version``, ``bands``, ``months``, ``directions``, plus free-form
provenance (``source``, ``ground_model``...). Labels are routed to tasks by an explicit table
(:data:`LABEL_ROUTES`), so e.g. crop labels can only come from the LC1 code through the crop class
list and bioregion labels only from the bioregion field.

Writers: :func:`pairs_from_sen4map` (Sen4Map HDF5 + a LUCAS embedding dict) here, and
``pipeline.pairs_from_cube`` (the pipeline's own cubes at a points file).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from encoder.errors import TimeSenCLIPError
from encoder.ground import DIRECTIONS, GroundEmbeddings
from encoder.preprocess import BANDS
from encoder.prompts import reference_classes

log = logging.getLogger(__name__)

PAIRS_FORMAT = "timesenclip-pairs"
PAIRS_VERSION = 1
MONTHS = 12
RAW_FIELDS = ("lc1", "lu1", "eunis", "bioregion", "country")

# task -> (key under `tasks` in classes.yaml, raw field it is read from, class attribute holding
# the raw codes; None = the raw value is the class name or the class index).
LABEL_ROUTES: dict[str, tuple[str, str, str | None]] = {
    "land_cover": ("lc", "lc1", "lucas_lc1_codes"),
    "land_use": ("lu", "lu1", "lucas_lu1_codes"),
    "crop_type": ("crop", "lc1", "lucas_lc1_code"),
    "bioregion": ("bioregion", "bioregion", None),
    "eunis_habitat": ("eunis", "eunis", None),
    "country": ("nuts", "country", "nuts0"),
}
TASKS = tuple(LABEL_ROUTES)
_MISSING = {"", "NA", "NAN", "NONE", "NULL", "-1"}


class PairsError(TimeSenCLIPError):
    """A pairs store or one of its sources is missing, malformed or inconsistent."""


# --- labels -------------------------------------------------------------------------------------


def check_task(task: str) -> str:
    """``task`` if it is a known task name, else a clear error."""
    if task not in LABEL_ROUTES:
        raise PairsError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def _text(value: Any) -> str:
    """A raw label value as a stripped string; "" for missing (None, NaN, NA, -1)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            value = int(value)
    text = str(value).strip() if value is not None else ""
    return "" if text.upper() in _MISSING else text


class LabelRouter:
    """Map raw label codes to class indices per task, by the explicit :data:`LABEL_ROUTES` table.

    A raw record maps field names (``lc1``, ``lu1``, ``eunis``, ``bioregion``, ``country``) or task
    names (``land_cover``... given as class name or index) to values. A field read through a code
    list (LC1, LU1, NUTS0) takes the codes or the class names; ``eunis`` and ``bioregion`` take the
    class name or index. Unknown values become -1 and are counted in :attr:`unknown`.
    """

    def __init__(self, tasks: Sequence[str] = TASKS) -> None:
        self.tasks = tuple(check_task(t) for t in tasks)
        self.unknown: Counter[tuple[str, str]] = Counter()
        self._codes: dict[str, dict[str, int]] = {}
        self._names: dict[str, dict[str, int]] = {}
        for task in self.tasks:
            yaml_key, _, code_attr = LABEL_ROUTES[task]
            codes, names = {}, {}
            for i, entry in enumerate(reference_classes(yaml_key)):
                names[entry["name"].casefold()] = names[str(i)] = i
                listed = entry.get(code_attr, []) if code_attr else []
                codes |= {c.upper(): i for c in ([listed] if isinstance(listed, str) else listed)}
            self._codes[task], self._names[task] = codes, names

    def route(self, raw: Mapping[str, Any]) -> dict[str, int]:
        """Class index (or -1) per task for one point's raw labels."""
        out = {}
        for task in self.tasks:
            _, raw_field, code_attr = LABEL_ROUTES[task]
            direct = _text(raw.get(task))
            value = direct or _text(raw.get(raw_field))
            index = self._codes[task].get(value.upper())
            # A bare number is a class index only where no code list applies (or named directly).
            if index is None and (direct or not (code_attr and value.isdigit())):
                index = self._names[task].get(value.casefold())
            # LC1 codes of non-crop land are expected to have no crop class: not "unknown".
            if index is None and value and task != "crop_type":
                self.unknown[(task, value)] += 1
            out[task] = -1 if index is None else index
        return out

    def warn_unknown(self) -> None:
        """Log one warning listing the unknown codes seen so far."""
        if self.unknown:
            shown = ", ".join(f"{t}={v!r} x{n}" for (t, v), n in self.unknown.most_common(10))
            log.warning("label values with no class (set to -1): %s", shown)


# --- in-memory pairs ----------------------------------------------------------------------------


@dataclass
class Pairs:
    """Training pairs in memory; array shapes and meaning as in the module docstring."""

    point_id: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    series: np.ndarray
    month_mask: np.ndarray
    ground: np.ndarray
    photo_mask: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.point_id)
        shapes = {
            "lon": (self.lon, (n,)),
            "lat": (self.lat, (n,)),
            "series": (self.series, (n, MONTHS, len(BANDS))),
            "month_mask": (self.month_mask, (n, MONTHS)),
            "photo_mask": (self.photo_mask, self.ground.shape[:2]),
        }
        shapes |= {f"labels/{k}": (v, (n,)) for k, v in self.labels.items()}
        shapes |= {f"raw/{k}": (v, (n,)) for k, v in self.raw.items()}
        for name, (array, shape) in shapes.items():
            if array.shape != shape:
                raise PairsError(f"pairs array {name} has shape {array.shape}, expected {shape}")
        if self.ground.ndim != 3 or len(self.ground) != n:
            raise PairsError(
                f"pairs array ground has shape {self.ground.shape}, expected (N, P, D)"
            )

    def __len__(self) -> int:
        return len(self.point_id)

    def subset(self, index: np.ndarray | slice) -> Pairs:
        """The pairs at ``index`` (positions or a boolean mask)."""
        return Pairs(
            self.point_id[index],
            self.lon[index],
            self.lat[index],
            self.series[index],
            self.month_mask[index],
            self.ground[index],
            self.photo_mask[index],
            {k: v[index] for k, v in self.labels.items()},
            {k: v[index] for k, v in self.raw.items()},
        )


@dataclass(frozen=True)
class PointRecord:
    """One point as read from a source, before ground photos and labels are attached."""

    point_id: str
    series: np.ndarray  # (12, 10) DN, NaN = missing
    raw: Mapping[str, Any]
    lon: float = math.nan
    lat: float = math.nan
    country: str | None = None


@dataclass
class AssembleStats:
    """Counts of points read and dropped while assembling pairs."""

    read: int = 0
    no_photos: int = 0
    no_months: int = 0

    @property
    def kept(self) -> int:
        return self.read - self.no_photos - self.no_months


def assemble_pairs(
    records: Sequence[PointRecord],
    ground: GroundEmbeddings,
    router: LabelRouter,
    stats: AssembleStats,
    require_photos: bool = True,
) -> Pairs:
    """Attach photos (looked up by country + point id) and task labels; drop unusable points.

    Points without any valid month are dropped, and, with ``require_photos``, points without any
    ground photo; ``stats`` counts both.
    """
    photos = [ground.photos(r.point_id, r.country) for r in records]
    series = np.stack([np.asarray(r.series, np.float32) for r in records]).reshape(
        len(records), MONTHS, len(BANDS)
    )
    month_mask = np.isfinite(series).all(-1)
    photo_mask = np.stack([m for _, m in photos])
    keep = month_mask.any(1)
    stats.read += len(records)
    stats.no_months += int((~keep).sum())
    if require_photos:
        stats.no_photos += int((keep & ~photo_mask.any(1)).sum())
        keep &= photo_mask.any(1)
    routed = [router.route(r.raw) for r in records]
    pairs = Pairs(
        np.array([r.point_id for r in records], dtype=object).astype(str),
        np.array([r.lon for r in records], np.float64),
        np.array([r.lat for r in records], np.float64),
        np.where(month_mask[..., None], series, np.nan).astype(np.float32),
        month_mask,
        np.stack([p for p, _ in photos]),
        photo_mask,
        {t: np.array([r[t] for r in routed], np.int16) for t in router.tasks},
        {
            f: np.array([_text(r.raw.get(f)) for r in records], dtype=object).astype(str)
            for f in RAW_FIELDS
        },
    )
    return pairs.subset(keep)


# --- the store ----------------------------------------------------------------------------------


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
            "write one with pairs_from_sen4map or pipeline.pairs_from_cube"
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


# --- Sen4Map HDF5 -------------------------------------------------------------------------------


def _default_label_attrs() -> dict[str, str]:
    return {
        "lc1": "lc1",
        "lu1": "lu1",
        "eunis": "EUNIS_L2",
        "bioregion": "bioregion_class_code",
        "country": "nuts0",
    }


@dataclass(frozen=True)
class Sen4MapLayout:
    """Where a Sen4Map-style HDF5 file keeps each point's data; the defaults read the published
    Sen4Map files (top-level groups ``Lucas_Point_<pointid>``, each with a dataset ``image``).

    Every HDF5 group holding a dataset named ``data`` is one point. The dataset is
    ``(T=12, C, H, W)`` digital numbers (pre-2022 scale); its band names come from the attribute
    ``bands_attr`` (on the dataset, the group or the file root; "B2" and "B02" both work) and the
    10 model bands are selected by name; without the attribute C must be 10 in BANDS order (as in
    Sen4Map). The pixel is ``pixel`` (row, col), default the centre (H // 2, W // 2) = (32, 32) of
    64x64 patches. Attributes (dataset first, then group): ``point_id`` (default: the group name
    after its last "_", so ``Lucas_Point_47243144`` -> ``47243144``), ``country`` and the raw
    label fields of ``labels`` (raw field -> attribute; the country is ``nuts0``). Longitude and
    latitude come from the ``lon``/``lat`` attributes, else from the 2-element ``coordinates``
    attribute read in ``coordinate_order``: Sen4Map's ``Coordinates`` are taken as (lon, lat),
    an assumption its documentation does not confirm ("latlon" swaps them). Values equal to
    ``nodata`` are treated as missing.
    """

    data: str = "image"
    bands_attr: str = "bands"
    point_id: str = "point_id"
    lon: str = "lon"
    lat: str = "lat"
    coordinates: str = "Coordinates"
    coordinate_order: Literal["lonlat", "latlon"] = "lonlat"
    labels: Mapping[str, str] = field(default_factory=_default_label_attrs)
    pixel: tuple[int, int] | None = None
    nodata: float | None = None


def _band_name(name: Any) -> str:
    text = _text(name).upper()
    return f"B0{text[1:]}" if len(text) == 2 and text[0] == "B" and text[1].isdigit() else text


def iter_sen4map(
    path: str | Path, layout: Sen4MapLayout = Sen4MapLayout()
) -> Iterator[PointRecord]:
    """One :class:`PointRecord` per point group of a Sen4Map-style HDF5 file (see the layout)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PairsError(f"HDF5 file {path} does not exist")
    with h5py.File(path, "r") as f:
        groups: list[h5py.Group] = []
        f.visititems(
            lambda _, obj: (
                groups.append(obj)
                if isinstance(obj, h5py.Group) and isinstance(obj.get(layout.data), h5py.Dataset)
                else None
            )
        )
        if isinstance(f.get(layout.data), h5py.Dataset):
            groups.insert(0, f)
        if not groups:
            raise PairsError(
                f"{path}: no group holds a dataset named {layout.data!r}; set the layout's "
                "`data` to the per-point dataset name"
            )
        for group in groups:
            yield _sen4map_point(path, f, group, layout)


def _sen4map_point(path: Path, root, group, layout: Sen4MapLayout) -> PointRecord:
    data = group[layout.data]
    where = f"{path}:{data.name}"

    def attr(name: str) -> Any:
        for holder in (data, group):
            if name in holder.attrs:
                return holder.attrs[name]
        return None

    if data.ndim != 4 or data.shape[0] != MONTHS:
        raise PairsError(f"{where} has shape {data.shape}, expected ({MONTHS}, bands, H, W)")
    names = attr(layout.bands_attr)
    if names is None:
        names = root.attrs.get(layout.bands_attr)
    if names is None:
        if data.shape[1] != len(BANDS):
            raise PairsError(
                f"{where} has {data.shape[1]} bands and no {layout.bands_attr!r} attribute naming "
                f"them: add the attribute or set the layout's bands_attr"
            )
        index = list(range(len(BANDS)))
    else:
        names = [_band_name(n) for n in np.atleast_1d(names)]
        if missing := [b for b in BANDS if b not in names]:
            raise PairsError(f"{where} lacks bands {missing} (it has {names})")
        index = [names.index(b) for b in BANDS]
    row, col = layout.pixel or (data.shape[2] // 2, data.shape[3] // 2)
    if not (0 <= row < data.shape[2] and 0 <= col < data.shape[3]):
        raise PairsError(f"{where}: pixel ({row}, {col}) is outside the {data.shape[2:]} patch")
    series = np.asarray(data[:, :, row, col], np.float32)[:, index]
    if layout.nodata is not None:
        series[series == layout.nodata] = np.nan
    point_id = _text(attr(layout.point_id)) or group.name.rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    raw = {name: attr(a) for name, a in layout.labels.items()}
    lon, lat = _lon_lat(attr(layout.lon), attr(layout.lat), attr(layout.coordinates), layout, where)
    return PointRecord(point_id, series, raw, lon, lat, _text(raw.get("country")) or None)


def _lon_lat(
    lon: Any, lat: Any, coordinates: Any, layout: Sen4MapLayout, where: str
) -> tuple[float, float]:
    """Degrees from separate attributes, else from the coordinate pair; NaN where unknown."""
    if lon is None and lat is None and coordinates is not None:
        pair = np.asarray(coordinates, np.float64).ravel()
        if pair.size != 2:
            raise PairsError(f"{where}: {layout.coordinates!r} holds {pair.size} values, not 2")
        lon, lat = pair if layout.coordinate_order == "lonlat" else pair[::-1]
    return (
        math.nan if lon is None else float(lon),
        math.nan if lat is None else float(lat),
    )


def _batched(items: Iterable[PointRecord], size: int) -> Iterator[list[PointRecord]]:
    batch: list[PointRecord] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_records(
    records: Iterable[PointRecord],
    ground: GroundEmbeddings,
    out: str | Path,
    *,
    tasks: Sequence[str] = TASKS,
    require_photos: bool = True,
    chunk: int = 4096,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> AssembleStats:
    """Assemble ``records`` with ``ground`` photos into a pairs store at ``out``, chunk by chunk."""
    if not len(ground):
        raise PairsError("the ground embedding file is empty: embed the photos first")
    router = LabelRouter(tasks)
    stats = AssembleStats()
    with PairsWriter(
        out, ground_dim=ground.dim, tasks=tasks, attrs=attrs, chunk=chunk, overwrite=overwrite
    ) as writer:
        for batch in _batched(records, chunk):
            writer.append(assemble_pairs(batch, ground, router, stats, require_photos))
        writer.group.attrs["dropped"] = {"no_photos": stats.no_photos, "no_months": stats.no_months}
    router.warn_unknown()
    log.info(
        "wrote %d pairs to %s (%d read, %d without photos, %d without valid months)",
        stats.kept,
        out,
        stats.read,
        stats.no_photos,
        stats.no_months,
    )
    return stats


def pairs_from_sen4map(
    h5_files: Sequence[str | Path],
    embeddings: str | Path,
    out: str | Path,
    *,
    layout: Sen4MapLayout = Sen4MapLayout(),
    tasks: Sequence[str] = TASKS,
    require_photos: bool = True,
    chunk: int = 4096,
    overwrite: bool = False,
) -> AssembleStats:
    """Pairs store from Sen4Map HDF5 files (pixel at the patch centre) + a LUCAS embedding dict.

    ``embeddings`` is a ``.pt``/``.npz``/``.zarr`` file keyed ``<country>_<pointid><W|E|N|S>``
    (see :mod:`encoder.ground`); a point with fewer than 4 photos keeps the present ones.
    """
    ground = GroundEmbeddings.load(embeddings)
    records = (r for h5 in h5_files for r in iter_sen4map(h5, layout))
    attrs = {
        "source": "sen4map",
        "inputs": [str(p) for p in h5_files],
        "embeddings": str(embeddings),
    }
    return write_records(
        records,
        ground,
        out,
        tasks=tasks,
        require_photos=require_photos,
        chunk=chunk,
        attrs=attrs,
        overwrite=overwrite,
    )
