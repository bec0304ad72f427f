"""Regions -> tiles on a fixed per-zone UTM grid.

Every point of a region is mapped in the CRS ``utm_epsg(lon, lat)`` names: the standard 6-degree
zones by longitude, 326xx north of the equator, 327xx south of it. The Norway/Svalbard exceptions
are deliberately not applied, so the grid is a pure function of longitude (stackstac reprojects
items from whatever zone Sentinel-2 filed them in). A region straddling zones (or the equator) is
split and each part is tiled in its own CRS; one array never mixes zones.

The grid of each CRS is global and fixed: cell (col, row) spans
``[col * S, (col + 1) * S) x [row * S, (row + 1) * S)`` metres with ``S = tile_size * resolution``,
so reruns and neighbouring regions share tile ids. A tile's bounds are its cell cut down to the
region's bounding box in that CRS, snapped outward to the pixel grid: small regions read only the
pixels they need, and tiles of one region share edges exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from pyproj import Transformer
from rasterio.features import geometry_mask, rasterize

from pipeline.geo.grid import Grid
from timesenclip.common.errors import TimeSenCLIPError

MIN_LAT, MAX_LAT = -80.0, 84.0  # latitudes the UTM system (and Sentinel-2's MGRS tiling) covers
_ZONE_WIDTH = 6.0
# Edges straight in lon/lat (GeoJSON's rule) bend in UTM; ~1 km steps keep the bend below a metre.
_DENSIFY_DEG = 0.01

Bounds = tuple[float, float, float, float]
Area = Sequence[float] | Mapping[str, Any]  # [west, south, east, north] or a GeoJSON geometry


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the standard UTM zone holding (lon, lat): 326xx north, 327xx south.

    A longitude on a zone boundary belongs to the zone east of it (6.0 -> zone 32), 180 to zone 60;
    latitude 0 counts as north.
    """
    if not (-180.0 <= lon <= 180.0 and MIN_LAT <= lat <= MAX_LAT):
        raise TimeSenCLIPError(
            f"point ({lon}, {lat}) is outside the UTM system: longitude must lie in -180..180 "
            f"and latitude in {MIN_LAT:g}..{MAX_LAT:g}"
        )
    zone = min(int((lon + 180.0) // _ZONE_WIDTH) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def check_bbox(bbox: Sequence[float], *, mapped: bool = True) -> Bounds:
    """A lon/lat ``[west, south, east, north]`` as floats; a TimeSenCLIPError says what is wrong.

    ``mapped`` boxes (regions) must lie where UTM zones are defined; a search box (``mapped=False``)
    may reach the poles.
    """
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise TimeSenCLIPError(
            f"a bbox is four numbers [west, south, east, north] in degrees, got {bbox!r}"
        ) from None
    if not all(-180.0 <= v <= 180.0 for v in (west, east)):
        raise TimeSenCLIPError("longitudes (west, east) must lie in -180..180")
    low, high = (MIN_LAT, MAX_LAT) if mapped else (-90.0, 90.0)
    if not all(low <= v <= high for v in (south, north)):
        where = ", where UTM zones and Sentinel-2 tiles are defined" if mapped else ""
        raise TimeSenCLIPError(f"latitudes (south, north) must lie in {low:g}..{high:g}{where}")
    if west >= east:
        raise TimeSenCLIPError(
            "west must be less than east (the order is [west, south, east, north]; a region "
            "crossing the antimeridian must be split into two regions)"
        )
    if south >= north:
        raise TimeSenCLIPError("south must be less than north (order [west, south, east, north])")
    return west, south, east, north


def _polygons(geometry: Mapping[str, Any]) -> list[list[np.ndarray]]:
    """Polygons of a GeoJSON Polygon/MultiPolygon as lists of (n, 2) lon/lat rings."""
    kind = geometry.get("type")
    if kind not in ("Polygon", "MultiPolygon"):
        raise TimeSenCLIPError(
            f"a region geometry must be a GeoJSON Polygon or MultiPolygon, got {kind!r}"
        )
    coords = geometry.get("coordinates")
    try:
        polygons = [[_ring(r) for r in p] for p in ([coords] if kind == "Polygon" else coords)]
    except TypeError:  # not nested lists at all
        polygons = []
    polygons = [p for p in polygons if p]
    if not polygons:
        raise TimeSenCLIPError(f"the {kind} geometry has no usable coordinates")
    return polygons


def _ring(positions: Any) -> np.ndarray:
    try:
        ring = np.asarray(positions, dtype=float)
    except (TypeError, ValueError):
        ring = np.empty((0, 0))
    if ring.ndim != 2 or ring.shape[0] < 4 or ring.shape[1] < 2:
        raise TimeSenCLIPError(
            "each polygon ring must be a list of at least 4 [lon, lat] positions"
        )
    return ring[:, :2]


def geometry_bounds(geometry: Mapping[str, Any]) -> Bounds:
    """Lon/lat bounds of a Polygon/MultiPolygon, checked to be degrees inside the UTM system."""
    points = np.concatenate([ring for polygon in _polygons(geometry) for ring in polygon])
    lo, hi = points.min(axis=0), points.max(axis=0)
    if not (lo[0] >= -180.0 and hi[0] <= 180.0 and lo[1] >= MIN_LAT and hi[1] <= MAX_LAT):
        raise TimeSenCLIPError(
            f"coordinates span x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g}: they must be "
            f"longitude/latitude (EPSG:4326) within -180..180, {MIN_LAT:g}..{MAX_LAT:g} "
            "(reproject the file, e.g. ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson)"
        )
    return check_bbox((lo[0], lo[1], hi[0], hi[1]))


def _as_polygons(area: Area) -> tuple[list[list[np.ndarray]], Bounds]:
    if isinstance(area, Mapping):
        return _polygons(area), geometry_bounds(area)
    bounds = check_bbox(area)
    return [[_rect_ring(bounds)]], bounds


def _rect_ring(bounds: Bounds) -> np.ndarray:
    w, s, e, n = bounds
    return np.array([(w, s), (e, s), (e, n), (w, n), (w, s)], dtype=float)


def _densify(ring: np.ndarray) -> np.ndarray:
    steps = np.diff(ring, axis=0)
    counts = np.maximum(1, np.ceil(np.abs(steps).max(axis=1) / _DENSIFY_DEG)).astype(int)
    starts = zip(ring[:-1], steps, counts, strict=True)
    parts = [a + d * (np.arange(k)[:, None] / k) for a, d, k in starts]
    return np.concatenate([*parts, ring[-1:]])


@functools.cache
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


def _project(polygons: Iterable[Iterable[np.ndarray]], epsg: int) -> dict[str, Any]:
    """Lon/lat polygons as a densified GeoJSON MultiPolygon in the UTM CRS ``epsg``."""
    out = []
    for polygon in polygons:
        rings = []
        for ring in polygon:
            x, y = _to_utm(epsg).transform(*_densify(ring).T)
            rings.append(np.column_stack([x, y]).tolist())
        out.append(rings)
    return {"type": "MultiPolygon", "coordinates": out}


def _crs_extent(epsg: int) -> Bounds:
    """The lon/lat rectangle whose points ``utm_epsg`` maps to ``epsg``."""
    zone, south = epsg % 100, epsg // 100 == 327
    west = -180.0 + _ZONE_WIDTH * (zone - 1)
    return west, MIN_LAT if south else 0.0, west + _ZONE_WIDTH, 0.0 if south else MAX_LAT


def _crs_parts(bounds: Bounds) -> Iterator[tuple[int, Bounds]]:
    """(epsg, lon/lat part of ``bounds``) for every UTM CRS the bounds reach into with an area."""
    west, south, east, north = bounds
    first = int((west + 180.0) // _ZONE_WIDTH) + 1
    last = max(first, math.ceil((east + 180.0) / _ZONE_WIDTH))  # an east edge on a boundary stays
    for zone in range(first, last + 1):
        for epsg in (32600 + zone, 32700 + zone):
            w, s, e, n = _crs_extent(epsg)
            part = (max(west, w), max(south, s), min(east, e), min(north, n))
            if part[0] < part[2] and part[1] < part[3]:
                yield epsg, part


def _pixel_extent(bounds: Bounds, epsg: int, resolution: float) -> tuple[int, int, int, int]:
    """Pixel index range (x0, y0, x1, y1) covering the lon/lat ``bounds`` in ``epsg``, outward."""
    ring = _project([[_rect_ring(bounds)]], epsg)["coordinates"][0][0]
    xs, ys = np.asarray(ring).T
    return (
        math.floor(xs.min() / resolution),
        math.floor(ys.min() / resolution),
        math.ceil(xs.max() / resolution),
        math.ceil(ys.max() / resolution),
    )


@dataclass(frozen=True)
class Tile:
    """One grid cell of a region: ``bounds`` (xmin, ymin, xmax, ymax) in metres of EPSG ``epsg``.

    ``col``/``row`` index the cell on the zone's fixed grid (row counts northward from northing 0);
    ``shape`` is (height, width) in pixels of ``resolution`` metres.
    """

    region: str
    epsg: int
    col: int
    row: int
    bounds: Bounds
    shape: tuple[int, int]
    resolution: float

    @property
    def id(self) -> str:
        """Stable cell id, the same for every region and run on the same grid."""
        return f"{self.epsg}_x{self.col:04d}_y{self.row:04d}"

    @property
    def grid(self) -> Grid:
        return Grid(self.epsg, self.bounds, self.resolution)

    @property
    def transform(self) -> Affine:
        """Affine from pixel (col, row) corners to UTM metres, north up."""
        return self.grid.transform

    @property
    def lonlat_bounds(self) -> Bounds:
        """(west, south, east, north) in degrees enclosing the tile, e.g. for a STAC search."""
        return self.grid.lonlat_bounds


def tiles_for_region(
    area: Area, tile_size_px: int, resolution: float, *, name: str = "region"
) -> list[Tile]:
    """Tiles covering ``area`` (a lon/lat bbox or a GeoJSON Polygon/MultiPolygon geometry).

    Cells the region (or its part in that CRS) does not touch are left out. Sorted by EPSG, then
    north to south, then west to east.
    """
    if not (isinstance(tile_size_px, int) and tile_size_px > 0):
        raise TimeSenCLIPError(f"tile_size_px must be a positive integer, got {tile_size_px!r}")
    if not resolution > 0:
        raise TimeSenCLIPError(
            f"resolution must be a positive number of metres, got {resolution!r}"
        )
    polygons, bounds = _as_polygons(area)
    tiles = []
    for epsg, part in _crs_parts(bounds):
        x0, y0, x1, y1 = _pixel_extent(part, epsg, resolution)
        c0, c1 = x0 // tile_size_px, (x1 - 1) // tile_size_px
        r0, r1 = y0 // tile_size_px, (y1 - 1) // tile_size_px
        span = tile_size_px * resolution
        grid = Affine(span, 0.0, c0 * span, 0.0, -span, (r1 + 1) * span)
        shape = (r1 - r0 + 1, c1 - c0 + 1)
        touched = [
            rasterize([_project(p, epsg)], out_shape=shape, transform=grid, all_touched=True)
            for p in (polygons, [[_rect_ring(_crs_extent(epsg))]])
        ]
        for i, j in zip(*np.nonzero(touched[0] & touched[1]), strict=True):
            col, row = c0 + int(j), r1 - int(i)
            px0, px1 = max(col * tile_size_px, x0), min((col + 1) * tile_size_px, x1)
            py0, py1 = max(row * tile_size_px, y0), min((row + 1) * tile_size_px, y1)
            tile_bounds = (px0 * resolution, py0 * resolution, px1 * resolution, py1 * resolution)
            tiles.append(
                Tile(name, epsg, col, row, tile_bounds, (py1 - py0, px1 - px0), resolution)
            )
    return sorted(tiles, key=lambda t: (t.epsg, -t.row, t.col))


def zone_groups(tiles: Iterable[Tile]) -> dict[int, list[Tile]]:
    """Tiles grouped by EPSG code (ascending), each group in the given order."""
    groups: dict[int, list[Tile]] = {}
    for tile in tiles:
        groups.setdefault(tile.epsg, []).append(tile)
    return dict(sorted(groups.items()))


def region_mask(area: Area, tile: Tile) -> np.ndarray:
    """Bool (height, width): True where a pixel centre lies in ``area`` and in the tile's UTM CRS.

    Masking by CRS as well keeps the pixels near a zone boundary from being mapped twice.
    """
    polygons, _ = _as_polygons(area)
    inside = [
        geometry_mask([_project(p, tile.epsg)], tile.shape, tile.transform, invert=True)
        for p in (polygons, [[_rect_ring(_crs_extent(tile.epsg))]])
    ]
    return inside[0] & inside[1]
