"""Monthly median Sentinel-2 cubes: cloud mask, BOA harmonisation, 12 composites per pixel.

``composite_chunk`` is what a pipeline task runs: it reads a chunk's scenes month by month
(``pipeline.cube.reader``: concurrent reads, pooled datasets, no Dask) and reduces each month at
once, so memory follows the chunk and the scenes of one month, not the length of the year.
``build_cube`` is the same reduction as a lazy xarray Dataset over any bounds, one Dask task per
month and spatial chunk, for notebooks and training samples.

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

import dask
import dask.array as da
import numpy as np
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pystac.utils import is_absolute_href, str_to_datetime
from rasterio.enums import Resampling
from rasterio.windows import Window

from encoder.preprocess import BANDS
from pipeline.cube.read_retry import ReadRetry
from pipeline.cube.reader import SceneRead, read_scenes
from pipeline.cube.temporal import BLOCKS, block_medians, nanmedian_time, reference_composite
from pipeline.geo.grid import Grid, reproject_bounds
from pipeline.search.items import ON_BAD_ASSET, SCL, BadAssetError, ItemRef, usable_refs
from pipeline.search.sentinel2 import BANDS_20M, DEFAULT_CLOUD_MASK, REFERENCE_ZERO_CLASSES
from timesenclip.common.errors import TimeSenCLIPError

__all__ = ["BadAssetError", "CubeOptions", "build_cube", "composite_chunk", "nanmedian_time"]

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


def build_cube(
    items: Sequence[pystac.Item | dict],
    *,
    epsg: int,
    bounds: tuple[float, float, float, float],
    year: int,
    resolution: float = 10.0,
    chunk_size: int = 512,
    cloud_mask: Sequence[int] = DEFAULT_CLOUD_MASK,
    mask_mode: str = "default",
    resampling: str = "nearest",
    on_bad_asset: str = "raise",
) -> xr.Dataset:
    """Lazy monthly composites of ``items`` on the ``epsg`` grid over ``bounds`` for ``year``.

    Returns a Dataset with ``composite`` (month=1..12, band=BANDS, y, x) float32 digital numbers on
    the pre-2022 scale (NaN where a month has no valid observation) and ``valid_months`` (y, x)
    uint8. ``x``/``y`` are pixel centres; ``bounds`` are snapped outward to multiples of
    ``resolution``. SCL is always resampled with nearest, the 20 m bands with ``resampling``.

    ``mask_mode="default"`` drops observations whose SCL class is in ``cloud_mask``.
    ``mask_mode="reference"`` (``cloud_mask`` unused) reproduces the published rule instead:
    SCL 9, 10, 11 become 0 and stay in the median, a month without observations takes the
    whole-year median, and ``valid_months`` counts the months that had observations; it holds
    all of a chunk's scenes in memory at once, so use a smaller ``chunk_size`` there.

    ``on_bad_asset="raise"`` raises ``BadAssetError`` (naming item, asset and href) for a missing
    or unreadable asset, ``"skip"`` logs a warning and leaves that item out instead.
    """
    _check_arguments(
        bounds, resolution, chunk_size, cloud_mask, mask_mode, resampling, on_bad_asset
    )
    options = CubeOptions(tuple(int(c) for c in cloud_mask), mask_mode, resampling, on_bad_asset)
    refs, skipped = usable_refs(_as_dicts(items), year, on_bad_asset)
    if not refs:
        raise TimeSenCLIPError(
            f"no usable Sentinel-2 item for {year} ({len(skipped)} skipped for bad assets): give "
            "items acquired in that year, or check the search and the assets they point to."
        )
    grid = Grid(epsg, _snapped(bounds, resolution), resolution)
    scenes = _in_order([r for r in refs if r.meets(grid)])
    if not scenes:
        log.warning(
            "none of the %d items overlaps bounds %s: the cube is empty", len(items), bounds
        )
    composite, valid = _lazy_composite(scenes, grid, options, chunk_size)
    used = {r.id for r in scenes}
    return _dataset(
        composite,
        valid,
        grid,
        attrs={
            "item_ids": [r.id for r in scenes],
            "harmonization": [
                {"item_id": r.id, "offset": r.offset, "rule": r.rule} for r in scenes
            ],
            "skipped_item_ids": [s["id"] for s in skipped],
            "unused_item_ids": [r.id for r in refs if r.id not in used],
            "year": year,
            "mask_mode": mask_mode,
            "cloud_mask": list(options.cloud_mask) if mask_mode == "default" else [],
            "zeroed_classes": list(REFERENCE_ZERO_CLASSES) if mask_mode == "reference" else [],
            "resampling": resampling,
        },
    )


def _in_order(refs: Iterable[ItemRef]) -> list[ItemRef]:
    """Scenes by acquisition time, as stackstac orders them."""
    return sorted(refs, key=lambda r: str_to_datetime(r.datetime))


def _as_dicts(items: Sequence[pystac.Item | dict]) -> list[Mapping]:
    """Item dicts; a pystac Item's relative hrefs made absolute, with no catalogue fetched."""
    plain = []
    for item in items:
        if isinstance(item, pystac.Item):
            data = item.to_dict(include_self_link=False, transform_hrefs=False)
            for key, asset in item.assets.items():
                if not is_absolute_href(asset.href):  # "/data/x.tif" is absolute: keep it
                    data["assets"][key]["href"] = asset.get_absolute_href() or asset.href
            item = data
        plain.append(item)
    return plain


def _snapped(bounds: tuple[float, float, float, float], res: float) -> tuple[float, ...]:
    xmin, ymin, xmax, ymax = bounds
    return (
        float(np.floor(xmin / res) * res),
        float(np.floor(ymin / res) * res),
        float(np.ceil(xmax / res) * res),
        float(np.ceil(ymax / res) * res),
    )


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
    """Tokens ``(k, 10, h, w)`` of a block of months' scenes and ``(months, h, w)`` has-data.

    One token per month in the default monthly mode; one per block (the median of the block's
    observations, ``pipeline.cube.temporal``) in seasonal and annual modes; 12 by the published rule
    in reference mode.
    """
    months = np.array([r.month for r in read.used], dtype=np.int8)
    offsets = np.array([r.offset for r in read.used], dtype=np.float32)
    shape = read.layers[SCL].shape[1:]
    if not len(months):  # every scene of the block left out: its tokens stay NaN
        reference = options.mask_mode == "reference"
        tokens = len(MONTHS) if reference else len(block) if options.temporal == "monthly" else 1
        empty = np.full((tokens, len(BANDS), *shape), np.nan, np.float32)
        return empty, np.zeros((len(block), *shape), bool)
    if options.mask_mode == "reference":
        values = _band_values(read.layers, offsets)
        has_data = np.stack([np.isfinite(values[months == m, 0]).any(axis=0) for m in block])
        return reference_composite(values, months, read.layers[SCL]), has_data
    observations = _observations(read.layers, offsets, options.cloud_mask)
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


def _lazy_composite(
    scenes: Sequence[ItemRef], grid: Grid, options: CubeOptions, chunk_size: int
) -> tuple[da.Array, da.Array]:
    """``(12, 10, y, x)`` composites and ``(y, x)`` valid months, one task a month and chunk."""
    height, width = grid.shape
    ys = _chunk_sizes(height, chunk_size)
    xs = _chunk_sizes(width, chunk_size)
    groups = _groups(scenes, options)
    block_rows = []
    for r0, h in zip(np.cumsum([0, *ys[:-1]]), ys, strict=True):
        row = []
        for c0, w in zip(np.cumsum([0, *xs[:-1]]), xs, strict=True):
            window = Window(int(c0), int(r0), w, h)
            row.append(
                da.concatenate(
                    [
                        da.from_delayed(
                            dask.delayed(_block, pure=True)(group, block, grid, window, options),
                            shape=(len(block), len(BANDS) + 1, h, w),
                            dtype=np.float32,
                        )
                        for _, block, group in groups
                    ]
                )
                if groups
                else da.zeros((0, len(BANDS) + 1, h, w), np.float32)
            )
        block_rows.append(row)
    blocks = da.block(block_rows)
    valid = (blocks[:, -1] == 1).sum(axis=0, dtype=np.uint8)
    composite = blocks[:, :-1]
    if options.mask_mode == "reference" and groups:
        return composite, valid
    empty = da.full(
        (1, len(BANDS), height, width), np.nan, dtype=np.float32, chunks=(1, -1, ys, xs)
    )
    where = {block[0]: k for k, (_, block, _) in enumerate(groups)}
    composite = da.concatenate(
        [composite[where[m] : where[m] + 1] if m in where else empty for m in MONTHS]
    )
    return composite, valid


def _block(
    refs: Sequence[ItemRef],
    block: tuple[int, ...],
    grid: Grid,
    window: Window,
    options: CubeOptions,
) -> np.ndarray:
    """One block of months of one spatial chunk: its tokens with a has-data layer appended."""
    tokens, has_data = _reduce(_read(refs, grid, window, options), options, block)
    return np.concatenate([tokens, has_data[:, None].astype(np.float32)], axis=1)


def _chunk_sizes(length: int, chunk: int) -> tuple[int, ...]:
    return (chunk,) * (length // chunk) + ((length % chunk,) if length % chunk else ())


def _check_arguments(
    bounds: tuple[float, float, float, float],
    resolution: float,
    chunk_size: int,
    cloud_mask: Sequence[int],
    mask_mode: str,
    resampling: str,
    on_bad_asset: str,
) -> None:
    problems = []
    if len(bounds) != 4 or not (bounds[0] < bounds[2] and bounds[1] < bounds[3]):
        problems.append(f"bounds {bounds} must be (xmin, ymin, xmax, ymax) with min < max")
    if not resolution > 0:
        problems.append(f"resolution {resolution} must be positive")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        problems.append(f"chunk_size {chunk_size} must be a positive whole number of pixels")
    if any(int(c) != c or not 0 <= c <= 11 for c in cloud_mask):
        problems.append(f"cloud_mask {list(cloud_mask)} must hold SCL classes 0..11")
    if mask_mode not in MASK_MODES:
        problems.append(f"mask_mode {mask_mode!r} must be one of {', '.join(MASK_MODES)}")
    if resampling not in Resampling.__members__:
        problems.append(
            f"resampling {resampling!r} must be a rasterio method such as nearest, bilinear, "
            "cubic or average"
        )
    if on_bad_asset not in BAD_ASSET_MODES:
        problems.append(
            f"on_bad_asset {on_bad_asset!r} must be one of {', '.join(BAD_ASSET_MODES)}"
        )
    if problems:
        raise TimeSenCLIPError("cannot build the cube: " + "; ".join(problems) + ".")


def _dataset(composite: da.Array, valid: da.Array, grid: Grid, attrs: dict) -> xr.Dataset:
    """A zarr-ready Dataset: plain coordinates, CRS and transform via rioxarray, JSON attrs."""
    coords = {
        "month": np.array(MONTHS, dtype=np.int8),
        "band": np.array(BANDS, dtype=object),  # zarr 3 specifies variable-length strings only
        "y": grid.bounds[3] - (np.arange(grid.shape[0]) + 0.5) * grid.resolution,
        "x": grid.bounds[0] + (np.arange(grid.shape[1]) + 0.5) * grid.resolution,
    }
    ds = xr.Dataset(
        {
            "composite": (("month", "band", "y", "x"), composite),
            "valid_months": (("y", "x"), valid),
        },
        coords=coords,
        attrs=attrs,
    )
    ds["composite"].attrs = {"units": "digital number (reflectance x 10000, pre-2022 scale)"}
    ds["valid_months"].attrs = {"long_name": "months with at least one valid observation"}
    return ds.rio.write_crs(grid.epsg).rio.write_transform(grid.transform)
