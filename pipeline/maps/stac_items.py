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

from pipeline.maps.outputs import CLASS_NODATA, CONFIDENCE_NODATA, NODATA_NAME, VALID_MONTHS
from pipeline.maps.style import StyledClass, fill_colors
from timesenclip.common.atomic import write_text_atomic
from timesenclip.common.errors import TimeSenCLIPError

_EDGE_POINTS = 21  # per footprint edge: UTM edges are curves in lon/lat
# Files that travel with a raster x.tif: (name suffix replacing ".tif", asset key suffix, title).
_SIDECARS = (
    (".qml", "style", "QGIS style"),
    (".tif.aux.xml", "aux_xml", "GDAL sidecar: category names, colour table, attribute table"),
)
_NOT_NAME_CHARS = re.compile(r"[^0-9A-Za-z_-]+")


class StacOutputError(TimeSenCLIPError):
    """A map that cannot be described by a STAC Item."""


def class_item(
    item_id: str,
    data_path: Path | str,
    classes: Sequence[StyledClass],
    *,
    year: int,
    title: str | None = None,
    description: str | None = None,
    class_descriptions: Mapping[int, str] | None = None,
    confidence_path: Path | str | None = None,
    valid_months_path: Path | str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> pystac.Item:
    """A STAC Item for a class map COG, to be saved beside it (asset hrefs are relative).

    Footprint, projection and per-class pixel counts are read from ``data_path``; ``classes`` are
    the map's (value, label, "#rrggbb") entries, value 0 being nodata; the item spans ``year``.
    Each raster's sidecars present on disk (``x.qml``, ``x.tif.aux.xml``) are listed too, as
    ``style`` / ``aux_xml`` for the map and ``<asset>_style`` / ``<asset>_aux_xml`` for the others.
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
    _add_valid_months(item, folder, valid_months_path)
    return item


def ramp_item(
    item_id: str,
    data_path: Path | str,
    *,
    years: tuple[int, int],
    title: str,
    description: str,
    valid_months_path: Path | str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> pystac.Item:
    """A STAC Item for a continuous map (similarity, change), spanning ``years`` (first, last).

    The data asset's raster band carries the map's nodata, scale, offset and unit, so readers
    that apply STAC raster scaling get the quantity itself; sidecars are listed as for a class map.
    """
    data_path = Path(data_path)
    item = _map_item(item_id, data_path, years, title, description, properties)
    asset = _add_asset(item, "data", data_path, data_path.parent, ["data"], title)
    asset.description = description
    _add_valid_months(item, data_path.parent, valid_months_path)
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


def _add_valid_months(item: pystac.Item, folder: Path, path: Path | str | None) -> None:
    if path is not None:
        asset = _add_asset(item, VALID_MONTHS, path, folder, ["quality"], "Valid months")
        asset.description = "Months (0..12) with at least one cloud-free observation."


def write_item(item: pystac.Item, path: Path | str) -> Path:
    """Save ``item`` as pretty JSON at ``path`` atomically, keeping relative asset hrefs."""
    record = item.to_dict(include_self_link=False, transform_hrefs=False)
    return write_text_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def note_skips(paths: Sequence[Path], skipped: Sequence[Mapping[str, Any]]) -> None:
    """Say in every STAC Item among ``paths`` how many asset reads the maps were made without,
    of which items, and whether a rerun will retry them (``timesenclip:*`` properties)."""
    note = {
        "timesenclip:skipped_assets": len(skipped),
        "timesenclip:skipped_items": sorted({str(s["id"]) for s in skipped}),
        "timesenclip:skips_to_retry": sum(bool(s.get("transient")) for s in skipped),
    }
    for path in paths:
        if path.suffix != ".json" or not path.is_file():
            continue
        record = json.loads(path.read_text())
        if record.get("type") == "Feature":
            record["properties"].update(note)
            write_text_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


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
    _add_sidecars(item, key, Path(path), folder)
    return asset


def _add_sidecars(item: pystac.Item, key: str, path: Path, folder: Path) -> None:
    prefix = "" if key == "data" else f"{key}_"
    for suffix, name, title in _SIDECARS:
        sidecar = path.with_name(path.name.removesuffix(".tif") + suffix)
        if sidecar.is_file():
            sidecar_asset = pystac.Asset(
                _relative_href(sidecar, folder),
                title=title,
                media_type=pystac.MediaType.XML,
                roles=["metadata"],
            )
            item.add_asset(prefix + name, sidecar_asset)


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
    classes: Sequence[StyledClass], counts: np.ndarray, descriptions: Mapping[int, str]
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


def write_collection(path: Path | str, item_paths: Sequence[Path], *, title: str) -> Path:
    """A STAC Collection at ``path`` linking the saved per-tile Items of one map (relative)."""
    path = Path(path)
    items = [json.loads(Path(p).read_text()) for p in item_paths]
    boxes = np.array([item["bbox"] for item in items], dtype=float)
    starts = [item["properties"].get("start_datetime") for item in items]
    ends = [item["properties"].get("end_datetime") for item in items]
    collection = pystac.Collection(
        id=_NOT_NAME_CHARS.sub("-", title).strip("-").lower(),
        title=title,
        description=f"{title}: one STAC Item per tile COG; open the VRT beside this folder.",
        extent=pystac.Extent(
            pystac.SpatialExtent([[*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)]]),
            pystac.TemporalExtent(
                [[_when(min(s for s in starts if s)), _when(max(e for e in ends if e))]]
                if any(starts) and any(ends)
                else [[None, None]]
            ),
        ),
        license="proprietary",
    )
    record = collection.to_dict(include_self_link=False, transform_hrefs=False)
    record["links"] += [
        {"rel": "item", "href": _relative_href(p, path.parent), "type": "application/json"}
        for p in item_paths
    ]
    return write_text_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
