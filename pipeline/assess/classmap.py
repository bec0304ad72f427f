"""A class map as an assessment reads it: its grid, nodata, class names and pixel areas, and a
census of its classes taken block by block, so maps larger than memory are read a piece at a time.

A map is one GeoTIFF (a COG from ``run``) or a GDAL VRT over per-tile COGs (``<task>.vrt``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.maps.cog import read_category_names
from pipeline.maps.outputs import CLASS_NODATA, NODATA_NAME
from timesenclip.common.errors import TimeSenCLIPError

BLOCK = 1024
"""Side of the square blocks a map is read in (1 MiB of uint8 pixels each)."""

_INTEGER_TYPES = ("uint8", "uint16")


@dataclass(frozen=True)
class ClassMap:
    """A single-band, north-up integer raster whose pixel values are classes."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    nodata: int | None
    names: dict[int, str]
    """The names the map gives its class values (:meth:`name` falls back to the value)."""

    @classmethod
    def open(cls, path: Path | str) -> ClassMap:
        path = Path(path)
        if not path.is_file():
            raise TimeSenCLIPError(f"class map {path} not found: pass a GeoTIFF or a .vrt mosaic")
        try:
            src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            raise TimeSenCLIPError(
                f"cannot read {path} as a raster ({err}): pass a GeoTIFF or VRT class map"
            ) from None
        with src:
            if src.count != 1 or src.dtypes[0] not in _INTEGER_TYPES:
                raise TimeSenCLIPError(
                    f"{path} has {src.count} band(s) of {src.dtypes[0]}: a class map is one band "
                    "of uint8 or uint16 class values (the <task>.tif or <task>.vrt `run` writes)"
                )
            if src.crs is None or src.transform.b or src.transform.d:
                raise TimeSenCLIPError(
                    f"{path} has no CRS or is rotated: areas need a north-up map with a CRS"
                )
            listed = read_category_names(path) or _xml_category_names(path)
            nodata = src.nodata
            if nodata is None and listed[CLASS_NODATA : CLASS_NODATA + 1] == [NODATA_NAME]:
                nodata = CLASS_NODATA
            names = {v: n for v, n in enumerate(listed) if n and v != nodata}
            return cls(
                path=path,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                nodata=None if nodata is None else int(nodata),
                names=names,
            )

    def name(self, value: int) -> str:
        return self.names.get(value, str(value))

    def windows(self, block: int = BLOCK) -> list[Window]:
        """The map cut into ``block``-pixel squares, row by row (the last ones smaller)."""
        return [
            Window(col, row, min(block, self.width - col), min(block, self.height - row))
            for row in range(0, self.height, block)
            for col in range(0, self.width, block)
        ]

    def row_areas(self, rows: np.ndarray) -> np.ndarray:
        """Area in m² of one pixel of each of ``rows``: the plane area of a projected map (exact
        for the pipeline's UTM grids), the area on the ellipsoid of a geographic one."""
        rows = np.asarray(rows)
        if not self.crs.is_geographic:
            unit = self.crs.linear_units_factor[1]
            return np.full(rows.shape, abs(self.transform.a * self.transform.e) * unit**2)
        geod = ProjCRS.from_user_input(self.crs).get_geod()
        west, east = self.transform.c, self.transform.c + self.transform.a
        tops = self.transform.f + self.transform.e * rows
        return np.array(
            [
                abs(geod.polygon_area_perimeter([west, east, east, west], [t, t, b, b])[0])
                for t, b in zip(tops, tops + self.transform.e, strict=True)
            ]
        )

    def values_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel values at map coordinates and whether each point is on a class (inside the map
        and not nodata); values off the map read as -1."""
        cols, rows = ~self.transform * (np.asarray(x, float), np.asarray(y, float))
        rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        inside = (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)
        values = np.full(len(rows), -1, dtype=np.int64)
        if inside.any():
            centres = self.transform * (cols[inside] + 0.5, rows[inside] + 0.5)
            with rasterio.open(self.path) as src:
                values[inside] = [v[0] for v in src.sample(zip(*centres, strict=True), indexes=1)]
        on_class = inside & (values != (-1 if self.nodata is None else self.nodata))
        return values, on_class

    def census(self, block: int = BLOCK) -> Census:
        """Count every class value block by block (one read of the map)."""
        windows = self.windows(block)
        per_window, pixels, area = [], {}, {}
        with rasterio.open(self.path) as src:
            for window in windows:
                data = src.read(1, window=window).ravel()
                counts = np.bincount(data)
                if self.nodata is not None and self.nodata < len(counts):
                    counts[self.nodata] = 0
                present = np.flatnonzero(counts)
                if self.crs.is_geographic:  # pixel areas change from row to row
                    rows = np.arange(window.row_off, window.row_off + window.height)
                    weights = np.repeat(self.row_areas(rows), window.width)
                    sums = np.bincount(data, weights=weights)[present]
                else:
                    sums = counts[present] * self.row_areas(np.zeros(1))[0]
                found = dict(zip(present.tolist(), counts[present].tolist(), strict=True))
                per_window.append(found)
                for value, summed in zip(found, sums.tolist(), strict=True):
                    pixels[value] = pixels.get(value, 0) + found[value]
                    area[value] = area.get(value, 0.0) + summed
        return Census(windows, per_window, dict(sorted(pixels.items())), area)


@dataclass(frozen=True)
class Census:
    """How many pixels of each class value a map holds, in all and block by block."""

    windows: list[Window]
    per_window: list[dict[int, int]]
    pixels: dict[int, int]
    area_m2: dict[int, float]

    def window_counts(self, value: int) -> np.ndarray:
        return np.array([counts.get(value, 0) for counts in self.per_window], dtype=np.int64)


def _xml_category_names(path: Path) -> list[str]:
    """Category names from a VRT's band, or from a GeoTIFF's ``.aux.xml`` sidecar."""
    source = path if path.suffix.lower() == ".vrt" else path.with_name(f"{path.name}.aux.xml")
    if not source.is_file():
        return []
    band = ET.parse(source).getroot().find("./*[@band='1']/CategoryNames")
    return [] if band is None else [c.text or "" for c in band.findall("Category")]
