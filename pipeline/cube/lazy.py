"""The lazy cube: monthly composites of STAC items as an xarray Dataset over any bounds.

``build_cube`` is the reduction a pipeline task runs (``pipeline.cube.composite``), one Dask task
per month and spatial chunk; ``cube_dataset`` gives it and the composites of a user's stack
(``pipeline.cube.stacks``) one form: ``composite (month, band, y, x)`` and ``valid_months (y, x)``
with the CRS and transform written by rioxarray.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import dask
import dask.array as da
import numpy as np
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pystac.utils import is_absolute_href
from rasterio.enums import Resampling
from rasterio.windows import Window

from encoder.preprocess import BANDS
from pipeline.cube.composite import (
    BAD_ASSET_MODES,
    MASK_MODES,
    MONTHS,
    CubeOptions,
    in_time_order,
    read_window,
    scene_groups,
    tokens_on_grid,
)
from pipeline.geo.grid import Grid
from pipeline.search.items import ItemRef, usable_refs
from pipeline.search.sentinel2 import DEFAULT_CLOUD_MASK, REFERENCE_ZERO_CLASSES
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)


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
    scenes = in_time_order([r for r in refs if r.meets(grid)])
    if not scenes:
        log.warning(
            "none of the %d items overlaps bounds %s: the cube is empty", len(items), bounds
        )
    composite, valid = _lazy_composite(scenes, grid, options, chunk_size)
    used = {r.id for r in scenes}
    return cube_dataset(
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


def _lazy_composite(
    scenes: Sequence[ItemRef], grid: Grid, options: CubeOptions, chunk_size: int
) -> tuple[da.Array, da.Array]:
    """``(12, 10, y, x)`` composites and ``(y, x)`` valid months, one task a month and chunk."""
    height, width = grid.shape
    ys = _chunk_sizes(height, chunk_size)
    xs = _chunk_sizes(width, chunk_size)
    groups = scene_groups(scenes, options)
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
    return monthly_composite(da.block(block_rows), [block for _, block, _ in groups], options)


def monthly_composite(
    blocks: da.Array, block_months: Sequence[tuple[int, ...]], options: CubeOptions
) -> tuple[da.Array, da.Array]:
    """``(12, 10, y, x)`` composites and ``(y, x)`` valid months from per-block results.

    ``blocks`` stacks, for each block of months in ``block_months`` (those with scenes, in
    order), its tokens with a has-data layer appended as an 11th band; months of no block stay
    NaN.
    """
    valid = (blocks[:, -1] == 1).sum(axis=0, dtype=np.uint8)
    composite = blocks[:, :-1]
    if options.mask_mode == "reference" and block_months:
        return composite, valid
    empty = da.full(
        (1, len(BANDS), *blocks.shape[2:]),
        np.nan,
        dtype=np.float32,
        chunks=(1, -1, *blocks.chunks[2:]),
    )
    where = {block[0]: k for k, block in enumerate(block_months)}
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
    read = read_window(refs, grid, window, options)
    tokens, has_data = tokens_on_grid(read, options, block, window)
    return np.concatenate([tokens, has_data[:, None].astype(np.float32)], axis=1)


def _chunk_sizes(length: int, chunk: int) -> tuple[int, ...]:
    return (chunk,) * (length // chunk) + ((length % chunk,) if length % chunk else ())


def mask_problems(cloud_mask: Sequence[int], mask_mode: str) -> list[str]:
    """What is wrong with a cloud mask and a mask mode, for an error message (none: [])."""
    problems = []
    if any(int(c) != c or not 0 <= c <= 11 for c in cloud_mask):
        problems.append(f"cloud_mask {list(cloud_mask)} must hold SCL classes 0..11")
    if mask_mode not in MASK_MODES:
        problems.append(f"mask_mode {mask_mode!r} must be one of {', '.join(MASK_MODES)}")
    return problems


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
    problems += mask_problems(cloud_mask, mask_mode)
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


def cube_dataset(composite: da.Array, valid: da.Array, grid: Grid, attrs: dict) -> xr.Dataset:
    """A zarr-ready Dataset: plain coordinates, CRS and transform via rioxarray, JSON attrs."""
    coords = {
        "month": np.array(MONTHS, dtype=np.int8),
        "band": np.array(BANDS, dtype=object),  # zarr 3 specifies variable-length strings only
        "y": grid.centres[0],
        "x": grid.centres[1],
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
