"""Sen4Map-style HDF5 files: one point's pixel series and raw labels per group, and pairs stores
made from them with a LUCAS ground-photo embedding dict."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from encoder.ground import GroundEmbeddings
from encoder.label_routes import TASKS, label_text
from encoder.pairs import MONTHS, PairsError
from encoder.pairs_assembly import AssembleStats, PointRecord, write_records
from encoder.preprocess import BANDS


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
    text = label_text(name).upper()
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
    point_id = label_text(attr(layout.point_id)) or group.name.rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    raw = {name: attr(a) for name, a in layout.labels.items()}
    lon, lat = _lon_lat(attr(layout.lon), attr(layout.lat), attr(layout.coordinates), layout, where)
    return PointRecord(point_id, series, raw, lon, lat, label_text(raw.get("country")) or None)


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
