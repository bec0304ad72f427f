"""Monthly median Sentinel-2 composites of a chunk: cloud mask, BOA harmonisation, 12 tokens.

``composite_chunk`` composites one window by itself: it reads the window's scenes month by month
(``pipeline.cube.reader``: concurrent reads, pooled datasets, no Dask) and reduces each month at
once (``pipeline.cube.observations``), so memory follows the window and the scenes of one month,
not the length of the year. A run composites whole tiles instead, each block decoded once
(``pipeline.cube.area``); the lazy cube (``pipeline.cube.lazy``) composites window by window
like this. ``observation_tokens`` is the reduction on its own, for float32 scenes already on a
grid: stacks of the user's (``pipeline.cube.stacks``).

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

from encoder.conventions import BANDS
from pipeline.cube.observations import Observations, masked_tokens, reference_tokens
from pipeline.cube.read_retry import ReadRetry
from pipeline.cube.reader import FINE, POOL, Buffers, DatasetPool, SceneRead, read_scenes
from pipeline.cube.temporal import BLOCKS, nanmedian_time
from pipeline.cube.tokens import COARSE_BANDS, Tokens, no_exceptions
from pipeline.geo.grid import Grid, reproject_bounds
from pipeline.search.items import ASSETS, ON_BAD_ASSET, SCL, BadAssetError, ItemRef
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
    window = window or Window(0, 0, grid.shape[1], grid.shape[0])
    height, width = window.height, window.width
    composite = np.full((len(token_months(options)), len(BANDS), height, width), np.nan, np.float32)
    valid = np.zeros((height, width), np.uint8)
    groups = scene_groups([r for r in refs if r.meets(grid)], options)
    used, skipped = [], []
    with ThreadPoolExecutor(1) as ahead:
        pending = [ahead.submit(read_window, g, grid, window, options) for _, _, g in groups[:1]]
        for k, (i, block, _) in enumerate(groups):
            read = pending.pop().result()
            if k + 1 < len(groups):
                pending.append(ahead.submit(read_window, groups[k + 1][2], grid, window, options))
            used += read.used
            skipped += read.skipped
            tokens, has_data = tokens_on_grid(read, options, block, window)
            first = 0 if options.mask_mode == "reference" else i
            composite[first : first + len(tokens)] = tokens
            valid += has_data.sum(axis=0, dtype=np.uint8)
    return ChunkCube(composite, valid, used, skipped)


def month_blocks(options: CubeOptions) -> tuple[tuple[int, ...], ...]:
    """The months read together: one block per token, or the whole year in reference mode."""
    return (MONTHS,) if options.mask_mode == "reference" else BLOCKS[options.temporal]


def scene_groups(
    scenes: Sequence[ItemRef], options: CubeOptions
) -> list[tuple[int, tuple[int, ...], list[ItemRef]]]:
    """``(index, months, scenes in time order)`` of each block of months that has scenes."""
    ordered = in_time_order(scenes)
    groups = [
        (i, block, [r for r in ordered if r.month in block])
        for i, block in enumerate(month_blocks(options))
    ]
    return [group for group in groups if group[2]]


def token_months(options: CubeOptions) -> tuple[tuple[int, ...], ...]:
    """The months of each token of the composite: 12, 4 or 1 token."""
    return BLOCKS["monthly"] if options.mask_mode == "reference" else BLOCKS[options.temporal]


def in_time_order(refs: Iterable[ItemRef]) -> list[ItemRef]:
    """Scenes by acquisition time, as stackstac orders them."""
    return sorted(refs, key=lambda r: str_to_datetime(r.datetime))


def read_window(
    refs: Sequence[ItemRef],
    grid: Grid,
    window: Window,
    options: CubeOptions,
    assets: Sequence[str] = ASSETS,
    buffers: Buffers | None = None,
    pool: DatasetPool = POOL,
) -> SceneRead:
    """``read_scenes`` of ``assets`` over ``window`` as ``options`` say, from ``pool``, into
    ``buffers`` when given; each scene left out is logged with the pixels of the window it
    would have filled."""
    read = read_scenes(
        refs,
        grid,
        window=window,
        resampling_of=options.resampling_of,
        on_bad_asset=options.on_bad_asset,
        concurrency=options.read_concurrency,
        sign_hrefs=options.sign_hrefs,
        retry=ReadRetry(options.read_retries, options.read_backoff),
        assets=assets,
        buffers=buffers,
        pool=pool,
    )
    by_id = {r.id: r for r in refs}
    for skip in read.skipped:
        skip["pixels"] = pixels_met(by_id[skip["id"]], grid, window)
        log.warning(
            "cannot read asset %r of item %s at %s (%s): the item is left out of %d pixels",
            skip["asset"],
            skip["id"],
            skip["href"],
            skip["reason"],
            skip["pixels"],
        )
    return read


def pixels_met(ref: ItemRef, grid: Grid, window: Window) -> int:
    """Pixels of ``window`` of ``grid`` inside the scene's footprint: those it would fill."""
    res = grid.resolution
    xmin, ymax = grid.bounds[0] + window.col_off * res, grid.bounds[3] - window.row_off * res
    xmax, ymin = xmin + window.width * res, ymax - window.height * res
    fx0, fy0, fx1, fy1 = reproject_bounds(ref.footprint, ref.footprint_epsg, grid.epsg)
    cols = max(0, round((min(xmax, fx1) - max(xmin, fx0)) / res))
    rows = max(0, round((min(ymax, fy1) - max(ymin, fy0)) / res))
    return cols * rows


def reduce_window(
    read: SceneRead, options: CubeOptions, block: Sequence[int], threads: int = 1
) -> tuple[Tokens, np.ndarray]:
    """The tokens of a block of months' scenes over ``read.window`` and ``(months, h, w)``
    whether each month has a valid observation, its medians on ``threads`` threads."""
    shape = (read.window.height, read.window.width)
    return _block_tokens(Observations.of(read), options, block, shape, threads)


def tokens_on_grid(
    read: SceneRead, options: CubeOptions, block: Sequence[int], window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, 10, h, w)`` of a block of months on the grid over ``window`` (which
    ``read.window`` covers), and ``(months, h, w)`` has-data."""
    tokens, has_data = reduce_window(read, options, block)
    top, left = window.row_off - read.window.row_off, window.col_off - read.window.col_off
    rows, cols = slice(top, top + window.height), slice(left, left + window.width)
    return tokens.full(rows, cols), has_data[:, rows, cols]


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
    each of the ``t`` scenes, in time order.
    """
    scl = layers[SCL]
    digital = {**layers, SCL: np.where(np.isnan(scl), 0, scl).astype(np.uint8)}
    obs = Observations(digital, 1, np.asarray(months), np.asarray(offsets, np.float32))
    height, width = scl.shape[1:]
    tokens, has_data = _block_tokens(obs, options, block, (height, width))
    return tokens.full(slice(0, height), slice(0, width)), has_data


def _block_tokens(
    obs: Observations,
    options: CubeOptions,
    block: Sequence[int],
    shape: tuple[int, int],
    threads: int = 1,
) -> tuple[Tokens, np.ndarray]:
    """One token per month in the default monthly mode; one per block (the median of the
    block's observations) in seasonal and annual modes; 12 by the published rule in reference
    mode (``pipeline.cube.observations``). NaN tokens where no scene is left."""
    reference = options.mask_mode == "reference"
    if not len(obs.months):  # every scene of the block left out: its tokens stay NaN
        count = len(MONTHS) if reference else len(block) if options.temporal == "monthly" else 1
        nan = {
            "fine": np.full((count, len(FINE), *shape), np.nan, np.float32),
            "coarse": np.full((count, len(COARSE_BANDS), *shape), np.nan, np.float32),
        }
        return Tokens(**nan, **no_exceptions()), np.zeros((len(block), *shape), bool)
    if reference:
        return reference_tokens(obs)
    blocks = [(m,) for m in block] if options.temporal == "monthly" else [block]
    return masked_tokens(obs, blocks, options.cloud_mask, threads)
