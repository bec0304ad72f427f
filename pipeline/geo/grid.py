"""One raster grid type: CRS, bounds and resolution, from which transform, shape and windows follow.

Tiles, chunks, embeddings stores and mosaics all describe their pixels with a ``Grid``, so a
window of one inside another is plain integer arithmetic and never a rounding question.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window

Bounds = tuple[float, float, float, float]


@functools.cache
def transformer(src_epsg: int, dst_epsg: int) -> Transformer:
    """A cached lon/lat-order (``always_xy``) transformer between two EPSG codes."""
    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)


def reproject_bounds(bounds: Bounds, src_epsg: int, dst_epsg: int) -> Bounds:
    """Bounds of the four corners of ``bounds`` in ``dst_epsg`` (the rule stackstac applies)."""
    if src_epsg == dst_epsg:
        return bounds
    xmin, ymin, xmax, ymax = bounds
    xs, ys = transformer(src_epsg, dst_epsg).transform(
        [xmin, xmin, xmax, xmax], [ymax, ymin, ymin, ymax]
    )
    return min(xs), min(ys), max(xs), max(ys)


def bounds_overlap(a: Bounds, b: Bounds) -> bool:
    """True when two boxes share an area (touching edges do not count)."""
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


@dataclass(frozen=True)
class Grid:
    """North-up pixels of ``resolution`` metres over ``bounds`` (xmin, ymin, xmax, ymax) in EPSG."""

    epsg: int
    bounds: Bounds
    resolution: float

    @property
    def transform(self) -> Affine:
        xmin, _, _, ymax = self.bounds
        return Affine(self.resolution, 0.0, xmin, 0.0, -self.resolution, ymax)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        xmin, ymin, xmax, ymax = self.bounds
        return round((ymax - ymin) / self.resolution), round((xmax - xmin) / self.resolution)

    @property
    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) coordinates of the pixel centres, top row and left column first."""
        height, width = self.shape
        xmin, _, _, ymax = self.bounds
        ys = ymax - (np.arange(height) + 0.5) * self.resolution
        return ys, xmin + (np.arange(width) + 0.5) * self.resolution

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def lonlat_bounds(self) -> Bounds:
        """(west, south, east, north) in degrees enclosing the grid, edges densified."""
        return tuple(transformer(self.epsg, 4326).transform_bounds(*self.bounds, densify_pts=21))

    def window(self, row: int, col: int, height: int, width: int) -> Grid:
        """The sub-grid of ``height`` x ``width`` pixels whose top-left pixel is (row, col)."""
        xmin, _, _, ymax = self.bounds
        res = self.resolution
        left, top = xmin + col * res, ymax - row * res
        return Grid(self.epsg, (left, top - height * res, left + width * res, top), res)

    def window_of(self, inner: Grid) -> Window:
        """Where ``inner`` (same CRS and resolution, pixel-aligned) sits in this grid."""
        if inner.epsg != self.epsg or inner.resolution != self.resolution:
            raise ValueError(f"{inner} is not on the pixel grid of {self}")
        height, width = inner.shape
        col = round((inner.bounds[0] - self.bounds[0]) / self.resolution)
        row = round((self.bounds[3] - inner.bounds[3]) / self.resolution)
        return Window(col, row, width, height)
