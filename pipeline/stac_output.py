"""STAC Items describing the maps a run writes: classification, projection, raster extensions."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

from encoder.atomic import write_text_atomic
from encoder.errors import TimeSenCLIPError
from pipeline.cog import CLASS_NODATA, CONFIDENCE_NODATA, NODATA_NAME
from pipeline.qml import ClassEntry, fill_colors

_EDGE_POINTS = 21  # per footprint edge: UTM edges are curves in lon/lat
_NOT_NAME_CHARS = re.compile(r"[^0-9A-Za-z_-]+")


class StacOutputError(TimeSenCLIPError):
    """A map that cannot be described by a STAC Item."""


def class_item(
    item_id: str,
    data_path: Path | str,
    classes: Sequence[ClassEntry],
    *,
    year: int,
    title: str | None = None,
    description: str | None = None,
    class_descriptions: Mapping[int, str] | None = None,
    confidence_path: Path | str | None = None,
    valid_months_path: Path | str | None = None,
    style_path: Path | str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> pystac.Item:
    """A STAC Item for a class map COG, to be saved beside it (asset hrefs are relative).

    Footprint, projection and per-class pixel counts are read from ``data_path``; ``classes`` are
    the map's (value, label, "#rrggbb") entries, value 0 being nodata; the item spans ``year``.
    """
    data_path = Path(data_path)
    folder = data_path.parent
    with rasterio.open(data_path) as src:
        if src.dtypes[0] != "uint8":
            raise StacOutputError(
                f"{data_path} holds {src.dtypes[0]} pixels, but a class map is uint8: write it "
                "with write_cog from a uint8 array."
            )
        counts = _value_counts(src)
    item = _map_item(item_id, data_path, (year, year), title, description, properties)
    data = _add_asset(item, "data", data_path, folder, ["data"], title or "Class map")
    ClassificationExtension.ext(data, add_if_missing=True).classes = _classifications(
        classes, counts, class_descriptions or {}
    )
    if confidence_path is not None:
        asset = _add_asset(item, "confidence", confidence_path, folder, ["quality"], "Confidence")
        asset.description = f"Class confidence, percent 0..100; {CONFIDENCE_NODATA} = no data."
    _add_companions(item, folder, valid_months_path, style_path)
    return item


def ramp_item(
    item_id: str,
    data_path: Path | str,
    *,
    years: tuple[int, int],
    title: str,
    description: str,
    valid_months_path: Path | str | None = None,
    style_path: Path | str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> pystac.Item:
    """A STAC Item for a continuous map (similarity, change), spanning ``years`` (first, last).

    The data asset's raster band carries the map's nodata, scale, offset and unit, so readers
    that apply STAC raster scaling get the quantity itself.
    """
    data_path = Path(data_path)
    item = _map_item(item_id, data_path, years, title, description, properties)
    asset = _add_asset(item, "data", data_path, data_path.parent, ["data"], title)
    asset.description = description
    _add_companions(item, data_path.parent, valid_months_path, style_path)
    return item


def _map_item(
    item_id: str,
    data_path: Path,
    years: tuple[int, int],
    title: str | None,
    description: str | None,
    properties: Mapping[str, Any] | None,
) -> pystac.Item:
    """An Item with the map's footprint, projection and time span, but no assets yet."""
    with rasterio.open(data_path) as src:
        crs, bounds, transform = src.crs, src.bounds, src.transform
        shape = [src.height, src.width]
    bbox, geometry = _footprint(crs, bounds)
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        start_datetime=dt.datetime(years[0], 1, 1, tzinfo=dt.UTC),
        end_datetime=dt.datetime(years[1], 12, 31, 23, 59, 59, tzinfo=dt.UTC),
        properties=dict(properties or {}),
    )
    item.common_metadata.title = title
    item.common_metadata.description = description
    item.common_metadata.created = dt.datetime.now(dt.UTC)
    epsg = crs.to_epsg()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        epsg=epsg,
        wkt2=None if epsg else crs.to_wkt(),
        shape=shape,
        transform=list(transform)[:6],
        bbox=list(bounds),
    )
    return item


def _add_companions(
    item: pystac.Item,
    folder: Path,
    valid_months_path: Path | str | None,
    style_path: Path | str | None,
) -> None:
    """The valid-months raster and the QGIS style, when given."""
    if valid_months_path is not None:
        asset = _add_asset(
            item, "valid_months", valid_months_path, folder, ["quality"], "Valid months"
        )
        asset.description = "Months (0..12) with at least one cloud-free observation."
    if style_path is not None:
        item.add_asset(
            "style",
            pystac.Asset(
                _relative_href(style_path, folder),
                title="QGIS style",
                media_type=pystac.MediaType.XML,
                roles=["metadata"],
            ),
        )


def write_item(item: pystac.Item, path: Path | str) -> Path:
    """Save ``item`` as pretty JSON at ``path`` atomically, keeping relative asset hrefs."""
    record = item.to_dict(include_self_link=False, transform_hrefs=False)
    return write_text_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _add_asset(
    item: pystac.Item, key: str, path: Path | str, folder: Path, roles: list[str], title: str
) -> pystac.Asset:
    """Add a COG asset, its href relative to ``folder`` (where the item is saved)."""
    with rasterio.open(path) as src:
        scaled = src.scales[0] != 1 or src.offsets[0] != 0
        nodata = src.nodata
        band = RasterBand.create(
            # JSON has no NaN: the raster extension spells it "nan".
            nodata="nan" if nodata is not None and math.isnan(nodata) else nodata,
            data_type=DataType(src.dtypes[0]),
            spatial_resolution=src.res[0],
            unit=src.units[0] or None,
            scale=src.scales[0] if scaled else None,
            offset=src.offsets[0] if scaled else None,
        )
    asset = pystac.Asset(
        _relative_href(path, folder), title=title, media_type=pystac.MediaType.COG, roles=roles
    )
    item.add_asset(key, asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [band]
    return asset


def _relative_href(path: Path | str, folder: Path) -> str:
    relative = Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()
    return relative if relative.startswith("../") else f"./{relative}"


def _value_counts(src: rasterio.io.DatasetReader) -> np.ndarray:
    # Block by block: a map of a whole region never has to fit in memory.
    counts = np.zeros(256, dtype=np.int64)
    for _, window in src.block_windows(1):
        counts += np.bincount(src.read(1, window=window).ravel(), minlength=256)[:256]
    return counts


def _footprint(crs: rasterio.crs.CRS, bounds) -> tuple[list[float], dict[str, Any]]:
    """Lon/lat bbox and polygon of a projected rectangle, its edges densified."""
    left, bottom, right, top = bounds
    step = np.linspace(0.0, 1.0, _EDGE_POINTS)[:-1]
    width, height = right - left, top - bottom
    # Counter-clockwise (RFC 7946): bottom edge eastwards, right edge north, top west, left south.
    xs = np.concatenate([left + step * width, np.full_like(step, right)])
    xs = np.concatenate([xs, right - step * width, np.full_like(step, left)])
    ys = np.concatenate([np.full_like(step, bottom), bottom + step * height])
    ys = np.concatenate([ys, np.full_like(step, top), top - step * height])
    lons, lats = transform_points(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lons, lats, strict=True)]
    bbox = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=_EDGE_POINTS)
    return [round(v, 7) for v in bbox], {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _machine_name(label: str, value: int) -> str:
    # The extension allows only letters, digits, "-" and "_" in names; the label becomes the title.
    return _NOT_NAME_CHARS.sub("_", label).strip("_") or f"class_{value}"


def _classifications(
    classes: Sequence[ClassEntry], counts: np.ndarray, descriptions: Mapping[int, str]
) -> list[Classification]:
    total = int(counts.sum())

    def share(value: int) -> dict[str, Any]:
        count = int(counts[value]) if 0 <= value < len(counts) else 0
        return {"count": count, "percentage": round(100.0 * count / total, 4) if total else 0.0}

    entries = [
        Classification.create(
            value=CLASS_NODATA, name="nodata", title=NODATA_NAME, nodata=True, **share(CLASS_NODATA)
        )
    ]
    for value, label, color in fill_colors(classes):
        entries.append(
            Classification.create(
                value=value,
                name=_machine_name(label, value),
                title=label,
                description=descriptions.get(value),
                color_hint=color.removeprefix("#").upper(),
                **share(value),
            )
        )
    return entries
