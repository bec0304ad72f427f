"""Training pairs from the pipeline's own monthly cubes, sampled at points that have ground photos.

Points file: a CSV with columns ``lon``, ``lat``, ``point_id`` and optional label columns, or a
GeoJSON FeatureCollection of Points whose properties hold ``point_id`` (else the feature ``id``)
and the labels. Label columns are raw fields (``lc1``, ``lu1``, ``eunis``, ``bioregion``,
``country``) or task names (``land_cover``... as class name or index); see
``encoder.label_routes.LabelRouter``. Photos come from an embedding file written by
``timesenclip ground-embed`` (keys ``<point_id><W|E|N|S>``) or a LUCAS dict.

Points are grouped by UTM zone and ``tile_size`` tiles; each group gets one STAC search and one
small cube over its points' bounding box, sampled at the pixel holding each point.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pyproj import Transformer

from encoder.ground import GroundEmbeddings
from encoder.label_routes import TASKS
from encoder.pairs_assembly import AssembleStats, PointRecord, write_records
from encoder.preprocess import BANDS
from pipeline.cube.lazy import build_cube
from pipeline.geo.tiles import utm_epsg
from pipeline.search.stac import EmptySearchError, StacSource, search_items
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)


class PointsError(TimeSenCLIPError):
    """A points file that cannot be read."""


def read_points(path: str | Path) -> list[dict[str, Any]]:
    """Points as dicts with ``point_id``, ``lon``, ``lat`` and any label fields (CSV or GeoJSON)."""
    path = Path(path)
    if not path.is_file():
        raise PointsError(f"points file {path} does not exist")
    if path.suffix.lower() in (".geojson", ".json"):
        points = _geojson_points(path)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            points = list(csv.DictReader(f))
        if points and (missing := {"lon", "lat", "point_id"} - set(points[0])):
            raise PointsError(f"{path} lacks the column(s) {sorted(missing)}")
    if not points:
        raise PointsError(f"{path} holds no points")
    for i, p in enumerate(points):
        try:
            p["lon"], p["lat"] = float(p["lon"]), float(p["lat"])
        except (TypeError, ValueError) as exc:
            raise PointsError(f"{path}, point {i}: lon/lat are not numbers ({exc})") from exc
        p["point_id"] = str(p["point_id"]).strip()
        if not p["point_id"]:
            raise PointsError(f"{path}, point {i}: empty point_id")
    return points


def _geojson_points(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PointsError(f"cannot read {path} as GeoJSON: {exc}") from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise PointsError(f"{path} is not a GeoJSON FeatureCollection")
    points = []
    for i, feat in enumerate(features):
        geometry = feat.get("geometry") or {}
        if geometry.get("type") != "Point":
            raise PointsError(f"{path}, feature {i}: geometry is {geometry.get('type')}, not Point")
        props = dict(feat.get("properties") or {})
        point_id = props.pop("point_id", feat.get("id"))
        if point_id is None:
            raise PointsError(f"{path}, feature {i}: no point_id property and no feature id")
        lon, lat = geometry["coordinates"][:2]
        points.append({**props, "point_id": point_id, "lon": lon, "lat": lat})
    return points


def sample_cube(cube: xr.Dataset, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 12, 10) composite values at the pixels holding the points (cube CRS coordinates).

    The pixel size comes from the cube's geotransform (``build_cube`` writes one), so a cube one
    pixel wide or tall samples at its true resolution. Points outside the cube get NaN.
    """
    xs, ys = cube["x"].values, cube["y"].values
    res_x, res_y = cube.rio.resolution()
    ix = np.rint((np.asarray(x) - xs[0]) / res_x).astype(int)
    iy = np.rint((np.asarray(y) - ys[0]) / res_y).astype(int)
    inside = (ix >= 0) & (ix < len(xs)) & (iy >= 0) & (iy < len(ys))
    out = np.full((len(ix), 12, len(BANDS)), np.nan, dtype=np.float32)
    if inside.any():
        picked = cube["composite"].isel(
            x=xr.DataArray(ix[inside], dims="point"), y=xr.DataArray(iy[inside], dims="point")
        )
        out[inside] = picked.transpose("point", "month", "band").values
    return out


def _groups(points: Sequence[dict[str, Any]], tile_size: float) -> dict[tuple, list[int]]:
    """(UTM EPSG, tile column, tile row) -> point indices; sets each point's ``_xy`` in UTM."""
    zones: dict[int, list[int]] = {}
    for i, p in enumerate(points):
        zones.setdefault(utm_epsg(p["lon"], p["lat"]), []).append(i)
    groups: dict[tuple, list[int]] = {}
    for epsg, members in zones.items():
        to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
        xs, ys = to_utm.transform(
            [points[i]["lon"] for i in members], [points[i]["lat"] for i in members]
        )
        for i, x, y in zip(members, np.atleast_1d(xs), np.atleast_1d(ys), strict=True):
            points[i]["_xy"] = (float(x), float(y))
            key = (epsg, math.floor(x / tile_size), math.floor(y / tile_size))
            groups.setdefault(key, []).append(i)
    return groups


def _records(
    points: Sequence[dict[str, Any]],
    source: StacSource,
    year: int,
    tile_size: float,
    cube_options: dict[str, Any],
    progress: bool,
) -> Iterator[PointRecord]:
    from tqdm.auto import tqdm

    resolution = float(cube_options.get("resolution", 10.0))
    groups = _groups(points, tile_size)
    for (epsg, _, _), members in tqdm(groups.items(), desc="cubes", disable=not progress):
        xy = np.array([points[i]["_xy"] for i in members])
        lo = np.floor(xy.min(0) / resolution) * resolution
        hi = (np.floor(xy.max(0) / resolution) + 1) * resolution
        bounds = (lo[0], lo[1], hi[0], hi[1])
        bbox = Transformer.from_crs(epsg, 4326, always_xy=True).transform_bounds(*bounds)
        try:
            items = search_items(source, bbox, year)
        except EmptySearchError as exc:
            log.warning("%d point(s) without imagery: %s", len(members), exc)
            series = np.full((len(members), 12, len(BANDS)), np.nan, np.float32)
        else:
            cube = build_cube(items, epsg=epsg, bounds=bounds, year=year, **cube_options)
            series = sample_cube(cube, xy[:, 0], xy[:, 1])
        for i, values in zip(members, series, strict=True):
            p = points[i]
            raw = {k: v for k, v in p.items() if k not in ("point_id", "lon", "lat", "_xy")}
            yield PointRecord(
                p["point_id"], values, raw, p["lon"], p["lat"], raw.get("country") or None
            )


def pairs_from_cube(
    points: str | Path,
    embeddings: str | Path,
    out: str | Path,
    *,
    source: StacSource,
    year: int,
    tile_size: float = 2560.0,
    tasks: Sequence[str] = TASKS,
    require_photos: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    **cube_options: Any,
) -> AssembleStats:
    """Pairs store at ``out`` from cubes built with ``build_cube`` (``cube_options``: its keyword
    arguments, e.g. ``chunk_size``, ``mask_mode``) sampled at the points of ``points``."""
    table = read_points(points)
    ground = GroundEmbeddings.load(embeddings)
    cube_options.setdefault("chunk_size", 256)
    records = _records(table, source, year, tile_size, cube_options, progress)
    attrs = {
        "source": "pipeline-cube",
        "points": str(points),
        "embeddings": str(embeddings),
        "stac": source.location,
        "year": year,
    }
    return write_records(
        records,
        ground,
        out,
        tasks=tasks,
        require_photos=require_photos,
        attrs=attrs,
        overwrite=overwrite,
    )
