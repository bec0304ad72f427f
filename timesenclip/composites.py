"""Monthly composites from a stackstac or odc-stac stack, or from STAC items."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pystac
import xarray as xr
from pyproj import CRS
from pyproj.exceptions import CRSError

from pipeline.cube.lazy import build_cube
from pipeline.cube.stacks import stack_cube
from pipeline.search.sentinel2 import DEFAULT_CLOUD_MASK
from timesenclip.common.errors import TimeSenCLIPError

Bounds = tuple[float, float, float, float]


def monthly_composites(
    source: xr.DataArray | xr.Dataset | Iterable[pystac.Item | dict],
    *,
    year: int | None = None,
    bounds: Bounds | None = None,
    crs: int | str | CRS | None = None,
    resolution: float = 10.0,
    chunk_size: int | None = None,
    cloud_mask: Sequence[int] = DEFAULT_CLOUD_MASK,
    mask_mode: str = "default",
    resampling: str = "nearest",
    on_bad_asset: str = "raise",
) -> xr.Dataset:
    """Lazy monthly median composites of Sentinel-2 L2A scenes, as a workflow run makes them.

    ``source`` is one of:

    - a ``stackstac.stack(items, assets=..., epsg=..., resolution=10, rescale=False,
      xy_coords="center")`` DataArray ``(time, band, y, x)``,
    - an ``odc.stac.load(items, bands=..., groupby="id", with_properties=[...])`` Dataset,
    - STAC items (pystac Items or dicts): then give ``bounds`` (xmin, ymin, xmax, ymax) in
      ``crs`` (a UTM EPSG code), and ``year``; they are read by the pipeline's own reader.

    Bands and SCL may carry Earth Search (``blue`` ... ``scl``) or Planetary Computer (``B02``
    ... ``SCL``) asset names. Each scene is harmonised to the pre-2022 scale from its item
    metadata (processing baseline, ``earthsearch:boa_offset_applied``, product names: a stack's
    per-item coordinates), observations whose SCL class is in ``cloud_mask`` are left out, and
    each month is the NaN-aware median of its observations. ``year`` defaults to the one year a
    stack holds. ``chunk_size`` (pixels) re-chunks a stack's ``y``/``x``; items default to 512.
    ``mask_mode="reference"`` applies the published training rule instead
    (``pipeline.cube.lazy.build_cube`` explains it and ``resampling`` and ``on_bad_asset``, which
    apply to items only).

    Returns a Dataset with ``composite (month, band, y, x)`` float32 digital numbers (NaN where a
    month has no clear observation) and ``valid_months (y, x)`` uint8, its CRS and transform
    written by rioxarray and its scenes and harmonisation rules in ``attrs``. Nothing is read
    until it is computed (with any Dask scheduler, a ``distributed.Client`` included).

    Raises ``TimeSenCLIPError`` naming what to pass: a stack without SCL or a band, a year with
    no scene, items without bounds, CRS or year.
    """
    if isinstance(source, xr.DataArray | xr.Dataset):
        given = [name for name, value in (("bounds", bounds), ("crs", crs)) if value is not None]
        if given:
            raise TimeSenCLIPError(
                f"{' and '.join(given)} are the stack's own: leave them out, or stack the items "
                "over other bounds."
            )
        if chunk_size is not None:
            source = source.chunk({"y": chunk_size, "x": chunk_size})
        return stack_cube(source, year=year, cloud_mask=cloud_mask, mask_mode=mask_mode)
    if isinstance(source, str) or not isinstance(source, Iterable):
        raise TimeSenCLIPError(
            f"expected a stackstac DataArray, an odc-stac Dataset or STAC items, got "
            f"{type(source).__name__}."
        )
    missing = [
        f"{name}={hint}"
        for name, value, hint in (
            ("bounds", bounds, "(xmin, ymin, xmax, ymax)"),
            ("crs", crs, "the UTM EPSG code of the bounds"),
            ("year", year, "the year to composite"),
        )
        if value is None
    ]
    if missing:
        raise TimeSenCLIPError(
            f"composites of STAC items need {', '.join(missing)}: pass them, or pass a stackstac "
            "or odc-stac stack of the items instead."
        )
    return build_cube(
        list(source),
        epsg=_epsg(crs),
        bounds=tuple(bounds),
        year=year,
        resolution=resolution,
        chunk_size=512 if chunk_size is None else chunk_size,
        cloud_mask=cloud_mask,
        mask_mode=mask_mode,
        resampling=resampling,
        on_bad_asset=on_bad_asset,
    )


def _epsg(crs: int | str | CRS) -> int:
    try:
        epsg = CRS.from_user_input(crs).to_epsg()
    except CRSError:
        epsg = None
    if epsg is None:
        raise TimeSenCLIPError(
            f"crs {crs!r} is not a CRS with an EPSG code: pass the UTM zone's, such as 32631."
        )
    return epsg
