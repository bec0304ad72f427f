"""Monthly median Sentinel-2 composites of a chunk: cloud mask, BOA harmonisation, 12 tokens.

``composite_chunk`` is what a pipeline task runs: it reads a chunk's scenes month by month
(``pipeline.cube.reader``: concurrent reads, pooled datasets, no Dask) and reduces each month at
once, so memory follows the chunk and the scenes of one month, not the length of the year.
``observation_tokens`` is that reduction on its own, for scenes already read: the lazy cube
(``pipeline.cube.lazy``) and stacks of the user's (``pipeline.cube.stacks``) call it too.

An observation (one item at one pixel) counts only when SCL and all 10 bands hold data (digital
number 0 is no-data), so a composite month is either complete or all NaN. Every item's digital
numbers are brought to the pre-2022 scale (``pipeline.search.harmonize``) before the median; the
calendar month is the item's UTC month.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pystac.utils import str_to_datetime
from rasterio.enums import Resampling
from rasterio.windows import Window

from encoder.preprocess import BANDS
from pipeline.cube.read_retry import ReadRetry
from pipeline.cube.reader import SceneRead, read_scenes
from pipeline.cube.temporal import BLOCKS, block_medians, nanmedian_time, reference_composite
from pipeline.geo.grid import Grid, reproject_bounds
from pipeline.search.items import ON_BAD_ASSET, SCL, BadAssetError, ItemRef
from pipeline.search.sentinel2 import BANDS_20M, DEFAULT_CLOUD_MASK

__all__ = [
    "BadAssetError",
    "CubeOptions",
    "composite_chunk",
    "nanmedian_time",
    "observation_tokens",
]

log = logging.getLogger(__name__)

MONTHS = tuple(range(1, 13))
MASK_MODES = ("default", "reference")
BAD_ASSET_MODES = ON_BAD_ASSET


@dataclass(frozen=True)
class CubeOptions:
    """How scenes become composites; shared by every chunk of a run."""

    cloud_mask: tuple[int, ...] = DEFAULT_CLOUD_MASK
    mask_mode: str = "default"
    resampling: str = "nearest"
    on_bad_asset: str = "raise"
    read_concurrency: int = 16
    temporal: str = "monthly"  # tokens: 12 months, 4 seasons (Jan-Mar, ...) or 1 year
    sign_hrefs: bool = False  # Planetary Computer: signed where read, so no signature expires
    read_retries: int = ReadRetry.retries  # more attempts after a transient read failure
    read_backoff: float = ReadRetry.backoff  # seconds before the first retry, doubled each time

    def resampling_of(self, band: str) -> Resampling:
        """SCL must keep its classes and the 10 m bands their pixels: only 20 m bands resample."""
        return Resampling[self.resampling if band in BANDS_20M else "nearest"]


@dataclass
class ChunkCube:
    """A chunk's composites ``(12, 10, h, w)``, valid-month count and what went into them."""

    composite: np.ndarray
    valid_months: np.ndarray
    used: list[ItemRef]
    skipped: list[dict] = field(default_factory=list)


def composite_chunk(
    refs: Sequence[ItemRef], grid: Grid, options: CubeOptions, window: Window | None = None
) -> ChunkCube:
    """Composites of the scenes in ``refs`` that meet ``grid``, over ``window`` of it (or all).

    ``composite`` holds 12 monthly, 4 seasonal or 1 annual token (``options.temporal``). Scenes
    are read one block of months at a time while the next block's reads are already in flight;
    in reference mode every scene is read at once (the whole-year median fills empty months).
    """
    height, width = grid.shape if window is None else (window.height, window.width)
    composite = np.full((len(_tokens(options)), len(BANDS), height, width), np.nan, np.float32)
    valid = np.zeros((height, width), np.uint8)
    groups = _groups([r for r in refs if r.meets(grid)], options)
    used, skipped = [], []
    with ThreadPoolExecutor(1) as ahead:
        pending = [ahead.submit(_read, g, grid, window, options) for _, _, g in groups[:1]]
        for k, (i, block, _) in enumerate(groups):
            read = pending.pop().result()
            if k + 1 < len(groups):
                pending.append(ahead.submit(_read, groups[k + 1][2], grid, window, options))
            used += read.used
            skipped += read.skipped
            tokens, has_data = _reduce(read, options, block)
            first = 0 if options.mask_mode == "reference" else i
            composite[first : first + len(tokens)] = tokens
            valid += has_data.sum(axis=0, dtype=np.uint8)
    return ChunkCube(composite, valid, used, skipped)


def _blocks(options: CubeOptions) -> tuple[tuple[int, ...], ...]:
    """The months read together: one block per token, or the whole year in reference mode."""
    return (MONTHS,) if options.mask_mode == "reference" else BLOCKS[options.temporal]


def _groups(
    scenes: Sequence[ItemRef], options: CubeOptions
) -> list[tuple[int, tuple[int, ...], list[ItemRef]]]:
    """``(index, months, scenes in time order)`` of each block of months that has scenes."""
    ordered = _in_order(scenes)
    groups = [
        (i, block, [r for r in ordered if r.month in block])
        for i, block in enumerate(_blocks(options))
    ]
    return [group for group in groups if group[2]]


def _tokens(options: CubeOptions) -> tuple[tuple[int, ...], ...]:
    return BLOCKS["monthly"] if options.mask_mode == "reference" else BLOCKS[options.temporal]


def _in_order(refs: Iterable[ItemRef]) -> list[ItemRef]:
    """Scenes by acquisition time, as stackstac orders them."""
    return sorted(refs, key=lambda r: str_to_datetime(r.datetime))


def _read(
    refs: Sequence[ItemRef], grid: Grid, window: Window | None, options: CubeOptions
) -> SceneRead:
    read = read_scenes(
        refs,
        grid,
        window=window,
        resampling_of=options.resampling_of,
        on_bad_asset=options.on_bad_asset,
        concurrency=options.read_concurrency,
        sign_hrefs=options.sign_hrefs,
        retry=ReadRetry(options.read_retries, options.read_backoff),
    )
    by_id = {r.id: r for r in refs}
    for skip in read.skipped:
        skip["pixels"] = _pixels_met(by_id[skip["id"]], grid, window)
        log.warning(
            "cannot read asset %r of item %s at %s (%s): the item is left out of %d pixels",
            skip["asset"],
            skip["id"],
            skip["href"],
            skip["reason"],
            skip["pixels"],
        )
    return read


def _pixels_met(ref: ItemRef, grid: Grid, window: Window | None) -> int:
    """Pixels of ``grid`` (its ``window``) inside the scene's footprint: those it would fill."""
    xmin, ymin, xmax, ymax = grid.bounds
    res = grid.resolution
    if window is not None:
        xmin, ymax = xmin + window.col_off * res, ymax - window.row_off * res
        xmax, ymin = xmin + window.width * res, ymax - window.height * res
    fx0, fy0, fx1, fy1 = reproject_bounds(ref.footprint, ref.footprint_epsg, grid.epsg)
    cols = max(0, round((min(xmax, fx1) - max(xmin, fx0)) / res))
    rows = max(0, round((min(ymax, fy1) - max(ymin, fy0)) / res))
    return cols * rows


def _reduce(
    read: SceneRead, options: CubeOptions, block: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``observation_tokens`` of the scenes a read gave."""
    months = np.array([r.month for r in read.used], dtype=np.int8)
    offsets = np.array([r.offset for r in read.used], dtype=np.float32)
    return observation_tokens(read.layers, months, offsets, options, block)


def observation_tokens(
    layers: Mapping[str, np.ndarray],
    months: np.ndarray,
    offsets: np.ndarray,
    options: CubeOptions,
    block: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``(k, 10, h, w)`` of a block of months' observations and ``(months, h, w)`` has-data.

    ``layers`` holds ``(t, h, w)`` float32 digital numbers of each band of ``ASSETS`` and SCL
    (NaN where a scene has none), ``months`` and ``offsets`` the calendar month and BOA offset of
    each of the ``t`` scenes. One token per month in the default monthly mode; one per block (the
    median of the block's observations, ``pipeline.cube.temporal``) in seasonal and annual modes;
    12 by the published rule in reference mode.
    """
    shape = layers[SCL].shape[1:]
    if not len(months):  # every scene of the block left out: its tokens stay NaN
        reference = options.mask_mode == "reference"
        tokens = len(MONTHS) if reference else len(block) if options.temporal == "monthly" else 1
        empty = np.full((tokens, len(BANDS), *shape), np.nan, np.float32)
        return empty, np.zeros((len(block), *shape), bool)
    if options.mask_mode == "reference":
        values = _band_values(layers, offsets)
        has_data = np.stack([np.isfinite(values[months == m, 0]).any(axis=0) for m in block])
        return reference_composite(values, months, layers[SCL]), has_data
    observations = _observations(layers, offsets, options.cloud_mask)
    has_data = np.stack([np.isfinite(observations[months == m, 0]).any(axis=0) for m in block])
    if options.temporal == "monthly":
        tokens = [nanmedian_time(observations[months == m]) for m in block]
    else:
        tokens = [block_medians(observations, months, "annual")[0]]
    return np.stack(tokens), has_data


def _band_values(layers: Mapping[str, np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """``(t, 10, h, w)`` digital numbers on the pre-2022 scale; NaN where a scene has none."""
    return np.stack([layers[band] - offsets[:, None, None] for band in BANDS], axis=1)


def _observations(
    layers: Mapping[str, np.ndarray], offsets: np.ndarray, cloud_mask: Sequence[int]
) -> np.ndarray:
    """Valid observations ``(t, 10, h, w)``: NaN unless SCL and all 10 bands hold data (DN 0 is
    no data) and SCL is not in ``cloud_mask``."""
    scl = layers[SCL]
    values = _band_values(layers, offsets)
    valid = np.isfinite(scl) & ~np.isin(scl, cloud_mask)
    for b, band in enumerate(BANDS):
        valid &= np.isfinite(values[:, b]) & (layers[band] != 0)
    values[~np.broadcast_to(valid[:, None], values.shape)] = np.nan
    return values
