"""One Dask task: read a chunk's cube, embed its pixels, classify them for every task."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.chunks import Chunk
from pipeline.classify import Plan  # [issue 11] class or similarity plans
from pipeline.cube import build_cube
from pipeline.embed import cached_encoder, embed_series, pixel_series

# valid_months holds 0..12 where a pixel is in the region; this marks pixels outside it.
OUTSIDE_REGION = 255


@dataclass(frozen=True)
class ChunkSettings:
    """What every chunk of a run shares; sent to each worker once."""

    year: int
    resolution: float
    chunk_size: int
    cloud_mask: tuple[int, ...]
    mask_mode: str
    resampling: str
    on_bad_asset: str
    checkpoint: str
    device: str
    batch_size: int
    tasks: tuple[Plan, ...]
    confidence: bool
    embeddings_store: Path | None = None

    def layers(self) -> dict[str, int | None]:
        """The uint8 rasters each chunk yields, by name, with their nodata values."""
        layers: dict[str, int | None] = {"valid_months": OUTSIDE_REGION}
        for task in self.tasks:  # [issue 11] each plan names its own layers
            layers.update(task.layers(self.confidence))
        return layers


@dataclass
class ChunkResult:
    """Small per-pixel rasters (see ``ChunkSettings.layers``) sent back for writing."""

    chunk: Chunk
    layers: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)


def _worker_threads() -> int | None:
    """Task slots of the Dask worker running this task, or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def process_chunk(
    chunk: Chunk,
    items: Sequence[dict],
    settings: ChunkSettings,
    inside: np.ndarray | None = None,
) -> ChunkResult:
    """Cube -> embeddings -> classes for one chunk; ``inside`` masks pixels outside the region."""
    threads = _worker_threads()
    if threads:
        # The worker already runs one task per core it was given; torch threads inside each
        # task would oversubscribe them.
        torch.set_num_threads(1)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    cube = build_cube(
        items,
        epsg=chunk.tile.epsg,
        bounds=chunk.bounds,
        year=settings.year,
        resolution=settings.resolution,
        chunk_size=max(chunk.height, chunk.width),
        cloud_mask=settings.cloud_mask,
        mask_mode=settings.mask_mode,
        resampling=settings.resampling,
        on_bad_asset=settings.on_bad_asset,
    )
    cube = cube.compute(scheduler="threads", num_workers=threads)
    composite = cube["composite"].values
    valid_months = cube["valid_months"].values.astype(np.uint8)
    if inside is not None:
        composite[:, :, ~inside] = np.nan
        valid_months[~inside] = OUTSIDE_REGION
    seconds["cube"] = time.perf_counter() - start

    start = time.perf_counter()
    model = cached_encoder(settings.checkpoint, settings.device)
    series, present = pixel_series(composite)
    embeddings = embed_series(model, series, present, batch_size=settings.batch_size)
    seconds["embed"] = time.perf_counter() - start
    if settings.embeddings_store is not None:
        from pipeline.embeddings import write_chunk_embeddings

        write_chunk_embeddings(settings.embeddings_store, chunk, embeddings)

    start = time.perf_counter()
    shape = (chunk.height, chunk.width)
    layers = {"valid_months": valid_months}
    for task in settings.tasks:  # [issue 11] each plan scores its own layers
        for name, values in task.score(embeddings, settings.confidence).items():
            layers[name] = values.reshape(shape)
    seconds["classify"] = time.perf_counter() - start
    return ChunkResult(chunk, layers, seconds)
