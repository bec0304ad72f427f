"""Where each region's pixels come from: region -> tile -> chunk task, with the scenes each reads.

Every STAC item is searched, parsed and harmonised once per run (``ItemRef``) and stored once,
however many tiles share it; tiles hold indices into that list, and a chunk task carries only the
items whose footprint meets the chunk. Chunk tasks are made when they are submitted, so a
continent's plan holds one small record per tile, not hundreds of thousands of tasks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.geo.chunks import Chunk, tile_chunks
from pipeline.geo.grid import transformer
from pipeline.geo.tiles import Tile, region_mask, zone_groups
from pipeline.search.items import ItemRef, check_hrefs, usable_ref
from pipeline.search.stac import EmptySearchError, RetryPolicy, StacError, StacSource, search_boxes
from pipeline.workflow.schema import Region, Workflow

log = logging.getLogger(__name__)


def piece_path(folder: Path, chunk: Chunk) -> Path:
    """Where a chunk task leaves its layers, in its tile's scratch ``folder``."""
    return folder / "chunks" / f"{chunk.id}.npz"


def done_path(folder: Path) -> Path:
    """The record whose presence marks a tile's scratch ``folder`` as finished."""
    return folder / "done.json"


@dataclass(frozen=True)
class ChunkTask:
    """One Dask task's whole input: a chunk, the scenes meeting it, and which pixels to map."""

    chunk: Chunk
    items: tuple[ItemRef, ...]
    inside: np.ndarray | None  # (h, w) bool, False outside the region; None when all inside
    folder: Path  # the tile's scratch folder, where the chunk leaves its piece

    @property
    def piece(self) -> Path:
        return piece_path(self.folder, self.chunk)


@dataclass(frozen=True)
class TilePlan:
    """A tile, the indices of the run's items meeting it and its scratch folder."""

    tile: Tile
    items: tuple[int, ...]
    folder: Path

    @property
    def done(self) -> bool:
        return done_path(self.folder).exists()


@dataclass(frozen=True)
class RegionPlan:
    """A region's tiles with items (tiles without any stay nodata and are listed apart)."""

    region: Region
    folder: Path
    tiles: tuple[TilePlan, ...]
    empty: tuple[Tile, ...]
    fingerprint: str = ""
    layout: str = "cog"  # one COG per layer and zone; "tiles": per-tile COGs under a VRT

    @property
    def pixels(self) -> int:
        return sum(p.tile.shape[0] * p.tile.shape[1] for p in self.tiles)


class RegionTarget(NamedTuple):
    """A region to plan: where its outputs and tile pieces go, and its fingerprint."""

    region: Region
    folder: Path
    scratch: Path
    fingerprint: str


@dataclass(frozen=True)
class ScenePlan:
    """Every region's tiles and the run's items, each once."""

    refs: tuple[ItemRef, ...]
    regions: tuple[RegionPlan, ...]
    skipped: tuple[dict, ...]  # items refused while parsing (under on_bad_asset: skip)
    chunk_size: int
    seconds: float = 0.0  # spent searching and tiling

    def chunk_tasks(self, plan: TilePlan, region: Region) -> Iterator[ChunkTask]:
        """The tile's chunk tasks, each with the items whose footprint meets its chunk."""
        refs = [self.refs[i] for i in plan.items]
        footprints = footprints_in(refs, plan.tile.epsg)
        inside = region_mask(region.area, plan.tile)
        for chunk in tile_chunks(plan.tile, self.chunk_size):
            xmin, ymin, xmax, ymax = chunk.bounds
            meets = (np.maximum(footprints[:, 0], xmin) < np.minimum(footprints[:, 2], xmax)) & (
                np.maximum(footprints[:, 1], ymin) < np.minimum(footprints[:, 3], ymax)
            )
            window = inside[chunk.window]
            yield ChunkTask(
                chunk,
                tuple(r for r, hit in zip(refs, meets, strict=True) if hit),
                None if window.all() else window.copy(),
                plan.folder,
            )

    def chunk_count(self, plan: TilePlan) -> int:
        return len(tile_chunks(plan.tile, self.chunk_size))


def stac_source(workflow: Workflow) -> StacSource:
    """The workflow's STAC source with its retry policy."""
    stac = workflow.stac
    return StacSource(
        url=stac.url,
        file=stac.file,
        collection=stac.collection,
        max_cloud_cover=stac.max_cloud_cover,
        provider=stac.provider,
        retry=RetryPolicy(attempts=stac.retries + 1),
    )


def make_plan(
    workflow: Workflow, regions: Sequence[RegionTarget], *, concurrency: int = 8
) -> ScenePlan:
    """Search, parse and assign the items of every tile of ``regions``, searching once; lay out
    each region's outputs (``region_layout``).

    A region where no tile has any usable item is an error naming the region.
    """
    started = time.perf_counter()
    if not regions:  # every region already complete: nothing to search
        return ScenePlan((), (), (), workflow.cube.chunk_size)
    tiles = {target.region.name: workflow.tiles(target.region) for target in regions}
    every = [t for target in regions for t in tiles[target.region.name]]
    skipped: list[dict] = []
    source = stac_source(workflow)
    year, on_bad = workflow.year, workflow.stac.on_bad_asset

    def reduce(item: dict) -> ItemRef | None:
        # Each item is parsed when first found; its dict is dropped straight after.
        return usable_ref(item, year, on_bad, skipped, base=source.file)

    try:
        catalog = search_boxes(
            source,
            [t.lonlat_bounds for t in every],
            year,
            concurrency=concurrency,
            reduce=reduce,
        )
    except StacError as error:
        names = ", ".join(f"{t.region.name} (bbox {list(t.region.bbox)})" for t in regions)
        raise StacError(f"searching Sentinel-2 items for region {names} failed: {error}") from None
    refs: list[ItemRef] = []
    index: list[int | None] = []  # catalog position -> position in refs
    for ref in catalog.items:
        index.append(None if ref is None else len(refs))
        if ref is not None:
            refs.append(ref)
    check_hrefs(refs, workflow.stac.reading_folders())
    found = iter(catalog.found)
    plans = []
    for region, folder, scratch, fingerprint in regions:
        with_items, empty = [], []
        for tile in tiles[region.name]:
            ids = tuple(sorted({index[j] for j in next(found) if index[j] is not None}))
            if ids:
                with_items.append(TilePlan(tile, ids, scratch / tile.id))
            else:
                log.warning("region %s, tile %s: no items, left as nodata", region.name, tile.id)
                empty.append(tile)
        if not with_items:
            raise EmptySearchError(
                f"region {region.name!r}: no Sentinel-2 item of {workflow.year} found in "
                f"{source.location} over bbox {list(region.bbox)} (collection "
                f"{workflow.stac.collection!r}, max cloud cover {workflow.stac.max_cloud_cover}). "
                "Check the region, the year, the collection and the cloud-cover limit."
            )
        layout = region_layout(with_items, workflow.outputs.mosaic_max_pixels)
        plans.append(
            RegionPlan(region, folder, tuple(with_items), tuple(empty), fingerprint, layout)
        )
    return ScenePlan(
        tuple(refs),
        tuple(plans),
        tuple(skipped),
        workflow.cube.chunk_size,
        time.perf_counter() - started,
    )


def region_layout(tiles: Sequence[TilePlan], max_pixels: int) -> str:
    """``"cog"``: one COG per layer and zone; ``"tiles"`` above ``max_pixels`` in any zone."""
    zones = zone_groups([p.tile for p in tiles])
    largest = max(_zone_pixels(tiles) for tiles in zones.values())
    return "tiles" if largest > max_pixels else "cog"


def _zone_pixels(tiles: list[Tile]) -> int:
    xmin = min(t.bounds[0] for t in tiles)
    ymin = min(t.bounds[1] for t in tiles)
    xmax = max(t.bounds[2] for t in tiles)
    ymax = max(t.bounds[3] for t in tiles)
    res = tiles[0].resolution
    return round((xmax - xmin) / res) * round((ymax - ymin) / res)


def footprints_in(refs: Sequence[ItemRef], epsg: int) -> np.ndarray:
    """(n, 4) footprints of ``refs`` in ``epsg``, the corners of each reprojected as
    ``reproject_bounds`` does, one pyproj call per source CRS rather than per item."""
    out = np.empty((len(refs), 4))
    groups: dict[int, list[int]] = {}
    for k, ref in enumerate(refs):
        groups.setdefault(ref.footprint_epsg, []).append(k)
    for src, ks in groups.items():
        boxes = np.array([refs[k].footprint for k in ks], dtype=float).reshape(-1, 4)
        if src == epsg:
            out[ks] = boxes
            continue
        xs = boxes[:, [0, 0, 2, 2]]
        ys = boxes[:, [3, 1, 1, 3]]
        xs, ys = transformer(src, epsg).transform(xs.ravel(), ys.ravel())
        xs, ys = np.reshape(xs, (-1, 4)), np.reshape(ys, (-1, 4))
        out[ks] = np.column_stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)])
    return out


def tile_bytes(plan: ScenePlan, tile: TilePlan) -> int | None:
    """Estimated bytes to read for a tile: each item's file sizes times the share it covers."""
    refs = [plan.refs[i] for i in tile.items]
    if any(ref.bytes is None for ref in refs):
        return None
    fx0, fy0, fx1, fy1 = footprints_in(refs, tile.tile.epsg).T
    tx0, ty0, tx1, ty1 = tile.tile.bounds
    overlap = np.maximum(0.0, np.minimum(fx1, tx1) - np.maximum(fx0, tx0)) * np.maximum(
        0.0, np.minimum(fy1, ty1) - np.maximum(fy0, ty0)
    )
    area = (fx1 - fx0) * (fy1 - fy0)
    share = np.divide(overlap, area, out=np.ones_like(area), where=area > 0)
    return math.ceil(float(np.sum(np.array([r.bytes for r in refs], dtype=float) * share)))
