"""The tasks a worker runs besides compositing (``pipeline.run.composite_tasks``): a chunk (its
composites, embed, classify, write its piece) and a tile (join its chunks' pieces into the tile's
rasters).

Both are pure functions of their arguments and of files they write themselves, so the scheduler
can rerun either on any worker after a loss: a chunk whose piece is already on disk, or whose
tile is finished, returns at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from encoder.device import resolve_device
from pipeline.cube.area import all_here, stored_chunk
from pipeline.cube.composite import composite_chunk
from pipeline.cube.reader import configure_gdal
from pipeline.geo.chunks import tile_chunks
from pipeline.maps.classify import Plan
from pipeline.maps.cog import write_cog
from pipeline.maps.outputs import OUTSIDE_REGION, VALID_MONTHS
from pipeline.maps.pixel_encoder import (
    cached_encoder,
    pixel_series,
    score_composite,
    score_series,
)
from pipeline.plan.scenes import ChunkTask, TilePlan, done_path, piece_path
from pipeline.plan.settings import ChunkSettings
from pipeline.run.composite_tasks import BlockReport, remove_blocks, worker_threads
from timesenclip.common.atomic import atomic_path, write_text_atomic


@dataclass
class ChunkReport:
    """What a chunk tells the client: time per stage and which scenes went into it."""

    chunk_id: str
    pixels: int
    seconds: dict[str, float] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@dataclass
class TileReport:
    """A finished tile: its id, the item ids used and the scenes left out, with reasons."""

    tile_id: str
    used: list[str]
    skipped: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def to_retry(self) -> bool:
        """Whether a scene was left out for a failure that may pass (the tile is not done)."""
        return any(s.get("transient") for s in self.skipped)

    @classmethod
    def read(cls, folder: Path) -> TileReport:
        return cls(**json.loads(done_path(folder).read_text()))


def process_chunk(task: ChunkTask, settings: ChunkSettings, *blocks: BlockReport) -> ChunkReport:
    """Embeddings -> classes for one chunk from its tile's ``blocks`` of months, left as a piece
    file beside its tile."""
    chunk = task.chunk
    if done_path(task.folder).exists():
        return ChunkReport(chunk.id, 0)
    if task.piece.exists():
        with np.load(task.piece) as piece:
            return ChunkReport(**json.loads(str(piece["report"])))
    if worker_threads():
        # The worker already runs one task per core it was given; torch threads inside each
        # task would oversubscribe them.
        torch.set_num_threads(1)
    configure_gdal(dict(settings.gdal))
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    stored = [block.stored for block in blocks]
    if all_here(stored):
        window = Window(chunk.col, chunk.row, chunk.width, chunk.height)
        cube = stored_chunk(stored, task.items, chunk.tile.grid, window, settings.cube)
    else:  # on another machine than its tile's blocks (or they were lost): its own reads
        cube = composite_chunk(task.items, chunk.grid, settings.cube)
    composite, valid_months = cube.composite, cube.valid_months
    if task.inside is not None:
        composite[:, :, ~task.inside] = np.nan
        valid_months[~task.inside] = OUTSIDE_REGION
    seconds["cube"] = time.perf_counter() - start

    start = time.perf_counter()
    device = str(resolve_device(settings.device))  # a remote cluster's workers resolve "auto"
    model = cached_encoder(settings.checkpoint, device, settings.conventions)
    used, skipped = sorted({r.id for r in cube.used}), cube.skipped
    del cube
    run = {"runtime": settings.runtime, "precision": settings.precision}
    keep = settings.embeddings_store is not None
    scoring = 0.0  # seconds of the CPU's scores: the classify stage
    if torch.device(device).type == "cuda":
        # The whole chunk's series go to the GPU at once, scored there: only the uint8 layers
        # (and float16 embeddings) come back.
        series, present = pixel_series(composite, model.conventions)
        del composite  # the series hold what the encoder needs
        scored, embeddings = score_series(
            model,
            series,
            present,
            settings.tasks,
            confidence=settings.confidence,
            keep_embeddings=keep,
            **run,
        )
    else:
        scored, embeddings, scoring = score_composite(
            model,
            composite,
            settings.tasks,
            confidence=settings.confidence,
            keep_embeddings=keep,
            batch_size=settings.batch_size,
            **run,
        )
        del composite
    if keep:
        from pipeline.store.embeddings import write_chunk_embeddings

        write_chunk_embeddings(settings.embeddings_store, chunk, embeddings)
    seconds["embed"] = time.perf_counter() - start - scoring
    seconds["classify"] = scoring
    shape = (chunk.height, chunk.width)
    layers = {VALID_MONTHS: valid_months}
    layers.update({name: values.reshape(shape) for name, values in scored.items()})
    report = ChunkReport(chunk.id, chunk.pixels, seconds, used, skipped)
    task.piece.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(task.piece) as tmp, tmp.open("wb") as out:
        np.savez_compressed(out, report=json.dumps(report.__dict__), **layers)
    return report


def finish_tile(
    plan: TilePlan, settings: ChunkSettings, *reports: ChunkReport | BlockReport
) -> TileReport:
    """Join the tile's chunk pieces into one raster per layer, then mark the tile done.

    ``reports`` are the tile's chunk results, and its blocks' (whose files it removes): passing
    them makes the scheduler run this task only after every chunk, and recompute lost chunks
    first. A tile with a scene left out for a
    transient failure is not marked done and the pieces of those chunks are removed, so the next
    run redoes those chunks (and only those).
    """
    remove_blocks([r.stored for r in reports if isinstance(r, BlockReport)])
    reports = tuple(r for r in reports if isinstance(r, ChunkReport))
    if plan.done:
        return TileReport.read(plan.folder)
    start = time.perf_counter()
    tile = plan.tile
    layers = settings.layers()
    canvas = {name: np.full(tile.shape, nodata or 0, np.uint8) for name, nodata in layers.items()}
    pieces = {}
    for chunk in tile_chunks(tile, settings.chunk_size):
        piece = piece_path(plan.folder, chunk)
        with np.load(piece) as data:
            for name in layers:
                canvas[name][chunk.window] = data[name]
        pieces[chunk.id] = piece
    styles = layer_styles(settings.tasks, settings.confidence, settings.overview_resampling)
    for name, array in canvas.items():
        write_cog(
            plan.folder / f"{name}.tif",
            array,
            transform=tile.transform,
            crs=tile.grid.crs,
            nodata=layers[name],
            overviews=settings.tile_overviews,
            blocksize=settings.blocksize,
            **styles[name],
        )
    used = sorted({i for r in reports for i in r.used})
    skipped = [s for r in reports for s in r.skipped]
    seconds = {"write": time.perf_counter() - start}
    report = TileReport(tile.id, used, skipped, seconds)
    if report.to_retry:
        retry = {r.chunk_id for r in reports if any(s.get("transient") for s in r.skipped)}
        pieces = {i: p for i, p in pieces.items() if i in retry}
    else:
        # Written last: a tile counts as finished only once all its files are in place.
        write_text_atomic(done_path(plan.folder), json.dumps(report.__dict__))
    for piece in pieces.values():
        piece.unlink(missing_ok=True)
    return report


def layer_styles(
    tasks: Sequence[Plan], confidence: bool, overview_resampling: str
) -> dict[str, dict]:
    """COG keywords per output layer: the valid months', then each plan's own (``Plan.style``).

    The same for a tile's rasters and for the region's mosaics.
    """
    styles: dict[str, dict] = {
        VALID_MONTHS: {
            "overview_resampling": "nearest",
            "description": "months with a valid observation (0-12; 255 outside the region)",
        }
    }
    for plan in tasks:
        for name in plan.layers(confidence):
            styles[name] = plan.style(name, overview_resampling)
    return styles
