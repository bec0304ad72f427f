"""Processing chunks: windows of a tile on a fixed grid, so embeddings stores align with them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from pipeline.geo.grid import Grid
from pipeline.geo.tiles import Tile


@dataclass(frozen=True)
class Chunk:
    """A window of a tile: the unit of work a Dask task reads, embeds and classifies."""

    tile: Tile
    row: int  # offset inside the tile, in pixels
    col: int
    height: int
    width: int

    @property
    def grid(self) -> Grid:
        return self.tile.grid.window(self.row, self.col, self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.grid.bounds

    @property
    def window(self) -> tuple[slice, slice]:
        """Where the chunk's pixels sit in an array of its tile."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    @property
    def id(self) -> str:
        return f"{self.tile.id}_r{self.row:05d}_c{self.col:05d}"

    @property
    def pixels(self) -> int:
        return self.height * self.width


def grid_edges(low: float, high: float, step: float) -> list[float]:
    """Edges of the global grid of cell size ``step`` that fall strictly inside (low, high)."""
    first = math.floor(low / step + 1e-9) + 1
    last = math.ceil(high / step - 1e-9) - 1
    return [k * step for k in range(first, last + 1)]


def tile_chunks(tile: Tile, chunk_size: int) -> list[Chunk]:
    """Cut a tile on the zone-wide grid of ``chunk_size`` pixels (cells align across tiles)."""
    xmin, ymin, xmax, ymax = tile.bounds
    res = tile.resolution
    step = chunk_size * res
    xs = [xmin, *grid_edges(xmin, xmax, step), xmax]
    ys = [ymax, *reversed(grid_edges(ymin, ymax, step)), ymin]
    chunks = []
    for top, bottom in pairwise(ys):
        for left, right in pairwise(xs):
            chunks.append(
                Chunk(
                    tile=tile,
                    row=round((ymax - top) / res),
                    col=round((left - xmin) / res),
                    height=round((top - bottom) / res),
                    width=round((right - left) / res),
                )
            )
    return chunks
