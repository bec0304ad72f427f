"""Composites of a stack the user already holds: a stackstac DataArray or an odc-stac Dataset.

A stack has one time step per scene. Each step is harmonised from the item metadata the stack
carries along ``time`` (``pipeline.search.harmonize``: processing baseline, the provider's
``earthsearch:boa_offset_applied``, product names), and every block of months is reduced by
``pipeline.cube.composite.observation_tokens``, the function a pipeline task runs on the scenes it
reads itself: over a stack of the same items on the same grid the composites are the same, bit
for bit. Band and SCL asset names may be Earth Search's (``blue`` ... ``scl``) or Planetary
Computer's (``B02`` ... ``SCL``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine

from encoder.preprocess import BANDS
from pipeline.cube.composite import MONTHS, CubeOptions, observation_tokens
from pipeline.cube.lazy import cube_dataset, mask_problems, monthly_composite
from pipeline.cube.temporal import BLOCKS
from pipeline.geo.grid import Grid
from pipeline.search.harmonize import (
    APPLIED_PROPERTY,
    BASELINE_PROPERTY,
    NAME_PROPERTIES,
    harmonization,
)
from pipeline.search.items import ASSETS
from pipeline.search.sentinel2 import DEFAULT_CLOUD_MASK, REFERENCE_ZERO_CLASSES
from pipeline.search.stac import EARTH_SEARCH_ASSETS, PLANETARY_COMPUTER_ASSETS
from timesenclip.common.errors import TimeSenCLIPError

# The item properties harmonisation reads, as stackstac names its coordinates; odc-stac's
# ``with_properties`` names its variables with "_" for ":".
HARMONIZATION_PROPERTIES = (BASELINE_PROPERTY, APPLIED_PROPERTY, *NAME_PROPERTIES)
_LAYOUTS = {"Earth Search": EARTH_SEARCH_ASSETS, "Planetary Computer": PLANETARY_COMPUTER_ASSETS}


@dataclass(frozen=True)
class Observations:
    """A stack as the composite needs it: ``values`` (time, 11, y, x) float32 in ``ASSETS`` order
    (NaN = no data), and per time step its time, id and item properties; its grid."""

    values: da.Array
    times: np.ndarray
    ids: tuple[str, ...]
    properties: tuple[dict, ...]
    grid: Grid
    source: str

    def properties_advice(self) -> str:
        if self.source == "stackstac":
            return "stack with properties=True (stackstac's default), so that they come along"
        names = ", ".join(repr(p) for p in HARMONIZATION_PROPERTIES[:2])
        return f"load with with_properties=[{names}] (and groupby='id', one step per item)"


def stack_cube(
    stack: xr.DataArray | xr.Dataset,
    *,
    year: int | None = None,
    cloud_mask: Sequence[int] = DEFAULT_CLOUD_MASK,
    mask_mode: str = "default",
) -> xr.Dataset:
    """Lazy monthly composites of a stackstac DataArray or an odc-stac Dataset, as ``build_cube``.

    Only the scenes of ``year`` are used (default: the one year the stack holds). The result has
    the stack's grid and spatial chunks, one Dask task per month and chunk.
    """
    problems = mask_problems(cloud_mask, mask_mode)
    if problems:
        raise TimeSenCLIPError("cannot composite the stack: " + "; ".join(problems) + ".")
    options = CubeOptions(tuple(int(c) for c in cloud_mask), mask_mode)
    seen = observations(stack)
    times = seen.times.astype("datetime64[s]")
    year = _one_year(times, year)
    kept = np.flatnonzero(_years(times) == year)
    kept = kept[np.argsort(times[kept], kind="stable")]  # in time order, as items are read
    months = _months(times[kept])
    if not any(seen.properties[i] for i in kept):
        raise TimeSenCLIPError(
            f"the {seen.source} stack carries no item metadata to harmonise its scenes by "
            f"({', '.join(HARMONIZATION_PROPERTIES[:2])}): {seen.properties_advice()}."
        )
    rules = [harmonization({"id": seen.ids[i], "properties": seen.properties[i]}) for i in kept]
    offsets = np.array([rule.offset for rule in rules], np.float32)
    groups = [
        (block, np.flatnonzero(np.isin(months, block)))
        for block in ((MONTHS,) if mask_mode == "reference" else BLOCKS["monthly"])
    ]
    groups = [(block, where) for block, where in groups if len(where)]
    order = np.concatenate([where for _, where in groups])
    values = seen.values[kept[order]].rechunk({0: tuple(len(w) for _, w in groups), 1: -1})
    blocks = da.map_blocks(
        _tokens_block,
        values,
        months=months[order],
        offsets=offsets[order],
        block_months=tuple(block for block, _ in groups),
        options=options,
        chunks=(tuple(len(block) for block, _ in groups), (len(BANDS) + 1,), *values.chunks[2:]),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )
    composite, valid = monthly_composite(blocks, [block for block, _ in groups], options)
    return cube_dataset(
        composite,
        valid,
        seen.grid,
        attrs={
            "item_ids": [rules[k].item_id for k in order],
            "harmonization": [
                {"item_id": rules[k].item_id, "offset": rules[k].offset, "rule": rules[k].rule}
                for k in order
            ],
            "skipped_item_ids": [],
            "unused_item_ids": [seen.ids[i] for i in np.setdiff1d(np.arange(len(times)), kept)],
            "year": year,
            "mask_mode": mask_mode,
            "cloud_mask": list(options.cloud_mask) if mask_mode == "default" else [],
            "zeroed_classes": list(REFERENCE_ZERO_CLASSES) if mask_mode == "reference" else [],
            "source": seen.source,
        },
    )


def _tokens_block(
    values: np.ndarray,
    *,
    months: np.ndarray,
    offsets: np.ndarray,
    block_months: tuple[tuple[int, ...], ...],
    options: CubeOptions,
    block_info: dict | None = None,
) -> np.ndarray:
    """One block of months of one spatial chunk: its tokens with a has-data layer appended."""
    start, stop = block_info[0]["array-location"][0]
    block = block_months[block_info[0]["chunk-location"][0]]
    _check_digital_numbers(values[:, : len(BANDS)])
    layers = {name: values[:, i] for i, name in enumerate(ASSETS)}
    tokens, has_data = observation_tokens(
        layers, months[start:stop], offsets[start:stop], options, block
    )
    return np.concatenate([tokens, has_data[:, None].astype(np.float32)], axis=1)


def _check_digital_numbers(values: np.ndarray) -> None:
    """Refuse reflectances: a digital number is 0 (no data) or at least 1."""
    scaled = (values < 1) & (values != 0)  # NaN compares False
    if scaled.any():
        raise TimeSenCLIPError(
            f"the stack holds band values such as {float(values[scaled][0]):.4g}, not Sentinel-2 "
            "digital numbers: stackstac rescales by the items' raster:bands scale and offset "
            "unless told not to. Stack with rescale=False."
        )


def observations(stack: xr.DataArray | xr.Dataset) -> Observations:
    """What ``stack_cube`` reads of a stackstac DataArray or an odc-stac Dataset."""
    if isinstance(stack, xr.DataArray):
        return _stackstac(stack)
    if isinstance(stack, xr.Dataset):
        return _odc(stack)
    raise TimeSenCLIPError(
        f"expected a stackstac DataArray (time, band, y, x) or an odc-stac Dataset, got "
        f"{type(stack).__name__}."
    )


def _stackstac(stack: xr.DataArray) -> Observations:
    if set(stack.dims) != {"time", "band", "y", "x"}:
        raise TimeSenCLIPError(
            f"a stackstac stack has dimensions (time, band, y, x), this one {stack.dims}: pass "
            "the DataArray stackstac.stack returns."
        )
    stack = stack.transpose("time", "band", "y", "x")
    keys = _asset_keys([str(b) for b in stack["band"].values], "stack with assets=")
    values = da.asarray(stack.sel(band=[keys[name] for name in ASSETS]).data)
    return Observations(
        values.astype(np.float32),
        stack["time"].values,
        _ids(stack),
        _properties(stack.coords, stack.sizes["time"], lambda name: name),
        _grid(stack),
        "stackstac",
    )


def _odc(ds: xr.Dataset) -> Observations:
    keys = _asset_keys(list(map(str, ds.data_vars)), "load with bands=")
    layers = []
    for name in ASSETS:
        layer = ds[keys[name]]
        if layer.dims != ("time", "y", "x"):
            raise TimeSenCLIPError(
                f"variable {keys[name]!r} has dimensions {layer.dims}, not (time, y, x): pass "
                "the Dataset odc.stac.load returns."
            )
        data = da.asarray(layer.data)
        nodata = layer.attrs.get("nodata")
        as_float = data.astype(np.float32)
        if nodata is not None and not math.isnan(nodata):
            as_float = da.where(data == nodata, np.float32(np.nan), as_float)
        layers.append(as_float)
    return Observations(
        da.stack(layers, axis=1),
        ds["time"].values,
        _ids(ds),
        _properties(ds.variables, ds.sizes["time"], lambda name: name.replace(":", "_")),
        _grid(ds),
        "odc-stac",
    )


def _asset_keys(names: Sequence[str], advice: str) -> dict[str, str]:
    """``{band: name}`` of the provider whose names the stack uses, or an error naming those
    missing."""
    for table in _LAYOUTS.values():
        if set(table.values()) <= set(names):
            return dict(table)
    provider, table = max(_LAYOUTS.items(), key=lambda kv: len(set(kv[1].values()) & set(names)))
    missing = [
        f"{key!r} ({'SCL, the cloud mask' if band == 'SCL' else band})"
        for band, key in table.items()
        if key not in names
    ]
    raise TimeSenCLIPError(
        f"the stack has bands {', '.join(names) or 'none'}; it lacks {', '.join(missing)}. "
        f"The encoder needs the 10 bands B02 ... B12 and SCL ({provider} names): {advice}"
        f"{list(table.values())}."
    )


def _ids(stack: xr.DataArray | xr.Dataset) -> tuple[str, ...]:
    if "id" in stack.coords and stack.coords["id"].dims == ("time",):
        return tuple(str(i) for i in stack.coords["id"].values)
    return tuple(str(t)[:19] for t in stack["time"].values.astype("datetime64[s]"))


def _properties(variables: Mapping, steps: int, named: Callable[[str], str]) -> tuple[dict, ...]:
    """Per time step, the harmonisation properties the stack holds (scalar ones for every step)."""
    found: list[dict] = [{} for _ in range(steps)]
    for prop in HARMONIZATION_PROPERTIES:
        name = named(prop)
        if name not in variables or variables[name].dims not in ((), ("time",)):
            continue
        values = np.broadcast_to(np.asarray(variables[name].values), (steps,))
        for step, value in zip(found, values, strict=True):
            plain = _plain(prop, value)
            if plain is not None:
                step[prop] = plain
    return tuple(found)


def _plain(prop: str, value) -> str | bool | None:
    """A property as its item has it: odc-stac turns every property into a float."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    if prop == APPLIED_PROPERTY:
        return bool(value)
    if prop == BASELINE_PROPERTY and isinstance(value, float | np.floating):
        return f"{float(value):05.2f}"
    return str(value)


def _grid(stack: xr.DataArray | xr.Dataset) -> Grid:
    """The stack's grid: stackstac's ``transform`` attribute (right for any ``xy_coords``), else
    rioxarray's reading of the coordinates and ``spatial_ref``."""
    crs = stack.rio.crs
    if crs is None or crs.to_epsg() is None:
        raise TimeSenCLIPError(
            "the stack has no EPSG CRS: stack onto a UTM grid (stackstac epsg=, odc-stac crs=)."
        )
    transform = stack.attrs.get("transform")
    if not isinstance(transform, Affine):
        transform = stack.rio.transform()
    res = transform.a
    if transform.b or transform.d or transform.e != -res or res <= 0:
        raise TimeSenCLIPError(
            f"the stack's pixels are not square and north-up (transform {tuple(transform)[:6]}): "
            "stack with one resolution, such as resolution=10."
        )
    height, width = stack.sizes["y"], stack.sizes["x"]
    left, top = transform.c, transform.f
    return Grid(crs.to_epsg(), (left, top - height * res, left + width * res, top), res)


def _years(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[Y]").astype(int) + 1970


def _months(times: np.ndarray) -> np.ndarray:
    return (times.astype("datetime64[M]").astype(int) % 12 + 1).astype(np.int8)


def _one_year(times: np.ndarray, year: int | None) -> int:
    """``year``, or the stack's only year; an error naming the years the stack holds."""
    years = sorted(set(_years(times).tolist()))
    held = ", ".join(map(str, years)) or "none: it is empty"
    if year is None:
        if len(years) == 1:
            return years[0]
        raise TimeSenCLIPError(
            f"the stack holds scenes of several years or none ({held}): pass year= the year "
            "to composite."
        )
    if year not in years:
        raise TimeSenCLIPError(
            f"the stack holds no scene of {year} (its years: {held}): pass year= one of those, "
            f"or stack the items of {year}."
        )
    return int(year)
