"""Monthly median Sentinel-2 cube: stackstac reads, cloud mask, BOA harmonisation, 12 composites.

``build_cube`` stacks the 10 model bands and SCL of a year's items at ``resolution`` on a UTM grid
(items from a neighbouring zone are warped onto it), masks clouds by SCL, brings every item's
digital numbers to the pre-2022 scale (``pipeline.harmonize``) and takes a NaN-aware median per
calendar month (UTC). The result is lazy: each task reads one spatial chunk of one month's scenes
(all 11 assets) and reduces it at once, so memory follows ``chunk_size`` and the scenes per month,
not the length of the year.

An observation (one item at one pixel) counts only when SCL and all 10 bands hold data (digital
number 0 is no-data), so a composite month is either complete or all NaN.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import dask.array as da
import numpy as np
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor)
import stackstac
import xarray as xr
from pystac.utils import is_absolute_href
from rasterio.enums import Resampling
from stackstac.nodata_reader import nodata_for_window
from stackstac.rio_reader import AutoParallelRioReader

from encoder.errors import TimeSenCLIPError
from encoder.preprocess import BANDS
from pipeline.harmonize import Harmonization, harmonization
from pipeline.sentinel2 import BANDS_20M, DEFAULT_CLOUD_MASK, REFERENCE_ZERO_CLASSES
from pipeline.stac import band_assets

log = logging.getLogger(__name__)

SCL = "SCL"
ASSETS = (*BANDS, SCL)
MONTHS = tuple(range(1, 13))
MASK_MODES = ("default", "reference")
BAD_ASSET_MODES = ("raise", "skip")
_NAN = np.float32(np.nan)  # stackstac 0.5.1 rejects a Python float NaN for a float32 stack


class BadAssetError(TimeSenCLIPError):
    """An item's asset is missing from its STAC metadata or cannot be read."""


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
    stack_items, harmonizations, skipped = _usable_items(items, year, on_bad_asset)
    if not stack_items:
        raise TimeSenCLIPError(
            f"no usable Sentinel-2 item for {year} ({len(skipped)} skipped for bad assets): give "
            "items acquired in that year, or check the search and the assets they point to."
        )
    reader = functools.partial(
        _AssetReader, labels=_asset_labels(stack_items), on_bad_asset=on_bad_asset
    )
    stack = functools.partial(
        _stack, stack_items, epsg=epsg, bounds=bounds, resolution=resolution, reader=reader
    )
    # stackstac silently drops items that miss ``bounds``: a first, metadata-only stack tells
    # which remain, so the real one can be chunked exactly on month boundaries.
    probe = stack(ASSETS, chunks=(1, -1, chunk_size, chunk_size), resampling="nearest")
    ids = [str(i) for i in probe["id"].values]
    if not ids:
        log.warning(
            "none of the %d items overlaps bounds %s: the cube is empty", len(items), bounds
        )
        composite, valid = _empty_cube(probe, chunk_size)
    else:
        months = probe["time"].dt.month.values.astype(np.int8)
        offsets = np.array([harmonizations[i].offset for i in ids], dtype=np.float32)
        composite, valid = _composite(
            stack, months, offsets, chunk_size, cloud_mask, mask_mode, resampling
        )
    used = set(ids)
    return _dataset(
        composite,
        valid,
        probe,
        epsg,
        attrs={
            "item_ids": ids,
            "harmonization": [asdict(harmonizations[i]) for i in ids],
            "skipped_item_ids": skipped,
            "unused_item_ids": [i for i in harmonizations if i not in used],
            "year": year,
            "mask_mode": mask_mode,
            "cloud_mask": [int(c) for c in cloud_mask] if mask_mode == "default" else [],
            "zeroed_classes": list(REFERENCE_ZERO_CLASSES) if mask_mode == "reference" else [],
            "resampling": resampling,
        },
    )


def nanmedian_time(values: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN where a pixel has no finite value.

    Equals ``np.nanmedian(values, axis=0)``, several times faster on a short time axis and without
    its all-NaN warnings (sort once, NaN last, pick the middle of each pixel's finite values).
    """
    count = np.isfinite(values).sum(axis=0)
    ordered = np.sort(values, axis=0)
    low = np.take_along_axis(ordered, (np.maximum(count - 1, 0) // 2)[None], axis=0)[0]
    high = np.take_along_axis(ordered, (count // 2)[None], axis=0)[0]
    return (low + high) / values.dtype.type(2)


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


def _usable_items(
    items: Sequence[pystac.Item | dict], year: int, on_bad_asset: str
) -> tuple[list[dict], dict[str, Harmonization], list[str]]:
    """Plain stackstac dicts of the year's items with all assets, their offsets, skipped ids."""
    plain, rules, skipped = [], {}, []
    for raw in items:
        item = raw if isinstance(raw, pystac.Item) else pystac.Item.from_dict(raw)
        when = item.datetime or item.common_metadata.start_datetime
        if when is None or when.year != year:
            log.info("item %s (%s) is outside %d: left out", item.id, when, year)
            continue
        try:
            keys = _asset_keys(item)
        except BadAssetError as error:
            if on_bad_asset == "raise":
                raise
            log.warning("%s Skipping the item.", error)
            skipped.append(item.id)
            continue
        plain.append(_plain_item(item, keys))
        rules[item.id] = harmonization(item)
    return plain, rules, skipped


def _asset_keys(item: pystac.Item) -> dict[str, str]:
    """{band: asset key} for ASSETS, or BadAssetError naming the item and what is missing."""
    where = f" (item at {item.get_self_href()})" if item.get_self_href() else ""
    advice = "Pass on_bad_asset='skip' to leave such items out."
    try:
        keys = band_assets(item)
    except TimeSenCLIPError as error:
        raise BadAssetError(f"{error}{where} {advice}") from error
    empty = [f"{keys[name]!r} ({name})" for name in ASSETS if not item.assets[keys[name]].href]
    if empty:
        raise BadAssetError(
            f"item {item.id}{where} has no href for asset {', '.join(empty)}. {advice}"
        )
    return {name: keys[name] for name in ASSETS}


def _plain_item(item: pystac.Item, keys: Mapping[str, str]) -> dict:
    """The item as stackstac 0.5.1 reads it: assets renamed to band names, ``proj:epsg`` set.

    pystac >= 1.12 rewrites ``proj:epsg`` to ``proj:code``, which stackstac does not read.
    """
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    assets = {}
    for name, key in keys.items():
        asset = dict(data["assets"][key])
        if not is_absolute_href(asset["href"]):  # pystac would prefix "/data/x.tif" with a host
            asset["href"] = item.assets[key].get_absolute_href() or asset["href"]
        asset["timesenclip:key"] = key
        assets[name] = _with_epsg(asset)
    return {**data, "properties": _with_epsg(dict(data["properties"])), "assets": assets}


def _with_epsg(fields: dict) -> dict:
    code = fields.get("proj:code")
    if (
        fields.get("proj:epsg") is None
        and isinstance(code, str)
        and code.upper().startswith("EPSG:")
    ):
        fields["proj:epsg"] = int(code.split(":", 1)[1])
    return fields


def _asset_labels(items: Sequence[dict]) -> dict[str, str]:
    """href -> "asset 'key' (band) of item id", for errors raised while reading."""
    return {
        asset["href"]: f"asset {asset['timesenclip:key']!r} ({name}) of item {item['id']}"
        for item in items
        for name, asset in item["assets"].items()
    }


class _AssetReader(AutoParallelRioReader):
    """stackstac's reader, with read errors that name the item and asset (or skip it, logged)."""

    def __init__(self, *, labels: Mapping[str, str], on_bad_asset: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = labels.get(self.url, f"asset at {self.url}")
        self.on_bad_asset = on_bad_asset
        self.broken = False

    def read(self, window, **kwargs) -> np.ndarray:
        failure = None
        if not self.broken:
            try:
                return super().read(window, **kwargs)
            except RuntimeError as error:  # stackstac wraps every open or read failure in one
                failure = self._failure(error)
        if failure is not None:
            # Raised outside the except block, so rasterio's error is not chained as context:
            # Dask cannot pickle it back (tblib fails on it) and would hide the error's type.
            raise failure
        return nodata_for_window(window, self.fill_value, self.dtype)

    def _failure(self, error: RuntimeError) -> BadAssetError | None:
        """The error to raise for a failed read, or None after logging a skip."""
        cause = error.__cause__ or error
        if self.on_bad_asset == "raise":
            return BadAssetError(
                f"cannot read {self.label} at {self.url}: {cause}. Check that the file or URL "
                "is reachable, or pass on_bad_asset='skip' to leave the item out."
            )
        self.broken = True
        log.warning("cannot read %s at %s (%s): the item is left out", self.label, self.url, cause)
        return None

    def __getstate__(self) -> dict:
        return {
            **super().__getstate__(),
            "labels": {self.url: self.label},
            "on_bad_asset": self.on_bad_asset,
        }


def _stack(
    items: list[dict],
    assets: Sequence[str],
    *,
    epsg: int,
    bounds: tuple[float, float, float, float],
    resolution: float,
    chunks: tuple,
    resampling: str,
    reader: functools.partial,
) -> xr.DataArray:
    return stackstac.stack(
        items,
        assets=list(assets),
        epsg=epsg,
        bounds=bounds,
        resolution=resolution,
        resampling=Resampling[resampling],
        chunksize=chunks,
        dtype=np.dtype(np.float32),
        fill_value=_NAN,
        rescale=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        errors_as_nodata=(),
        reader=reader,
    )


def _composite(
    stack: functools.partial,
    months: np.ndarray,
    offsets: np.ndarray,
    chunk_size: int,
    cloud_mask: Sequence[int],
    mask_mode: str,
    resampling: str,
) -> tuple[da.Array, da.Array]:
    """(month, band, y, x) float32 composites and the (y, x) count of valid months, lazily."""
    reference = mask_mode == "reference"
    present, starts = np.unique(months, return_index=True)
    time_chunks = (len(months),) if reference else tuple(np.diff([*starts, len(months)]))
    chunks = (time_chunks, -1, chunk_size, chunk_size)
    # SCL must keep its classes: only the 20 m bands follow the requested resampling.
    fine = tuple(a for a in ASSETS if resampling == "nearest" or a not in BANDS_20M)
    groups = [fine] + ([] if len(fine) == len(ASSETS) else [BANDS_20M])
    stacks = [
        stack(group, chunks=chunks, resampling="nearest" if SCL in group else resampling).data
        for group in groups
    ]
    # Each task reads one spatial chunk of one time chunk (stackstac's read fuses into it) and
    # returns its months' composites plus a 0/1 "month has data" layer as an 11th band.
    blocks = da.map_blocks(
        _composite_block,
        *stacks,
        chunks=(
            (12,) if reference else (1,) * len(present),
            (len(BANDS) + 1,),
            *stacks[0].chunks[2:],
        ),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        groups=tuple(groups),
        months=months,
        offsets=offsets,
        cloud_mask=tuple(int(c) for c in cloud_mask),
        reference=reference,
    )
    valid = (blocks[:, -1] == 1).sum(axis=0, dtype=np.uint8)
    composite = blocks[:, :-1]
    if not reference:
        empty = da.full(
            (1, len(BANDS), *composite.shape[2:]),
            _NAN,
            dtype=np.float32,
            chunks=(1, -1, *composite.chunks[2:]),
        )
        where = {int(m): i for i, m in enumerate(present)}
        composite = da.concatenate(
            [composite[where[m] : where[m] + 1] if m in where else empty for m in MONTHS]
        )
    return composite, valid


def _composite_block(
    *stacks: np.ndarray,
    groups: tuple[tuple[str, ...], ...],
    months: np.ndarray,
    offsets: np.ndarray,
    cloud_mask: tuple[int, ...],
    reference: bool,
    block_info: dict,
) -> np.ndarray:
    """One spatial chunk of consecutive scenes -> (months, 11, y, x): composites + has-data."""
    start, stop = block_info[0]["array-location"][0]
    months, offsets = months[start:stop], offsets[start:stop]
    where = {name: (g, i) for g, group in enumerate(groups) for i, name in enumerate(group)}

    def layer(name: str) -> np.ndarray:
        g, i = where[name]
        return stacks[g][:, i]

    scl = layer(SCL)
    valid = np.isfinite(scl)
    for band in BANDS:
        values = layer(band)
        valid &= np.isfinite(values) & (values != 0)
    zeroed = valid & np.isin(scl, REFERENCE_ZERO_CLASSES) if reference else None
    if not reference:
        valid &= ~np.isin(scl, cloud_mask)
    out_months = MONTHS if reference else tuple(np.unique(months))
    spans = [slice(*np.searchsorted(months, [m, m + 1])) for m in out_months]
    out = np.full((len(out_months), len(BANDS) + 1, *scl.shape[1:]), np.nan, np.float32)
    for j, span in enumerate(spans):
        out[j, -1] = valid[span].any(axis=0)
    unfilled = out[:, -1] == 0  # reference mode: (month, y, x) to take the whole-year median
    invalid = ~valid
    for b, band in enumerate(BANDS):
        values = layer(band) - offsets[:, None, None]
        if zeroed is not None:
            values[zeroed] = 0
        values[invalid] = np.nan
        for j, span in enumerate(spans):
            if span.stop > span.start:
                out[j, b] = nanmedian_time(values[span])
        if reference:
            out[:, b][unfilled] = np.broadcast_to(nanmedian_time(values), unfilled.shape)[unfilled]
    return out


def _empty_cube(probe: xr.DataArray, chunk_size: int) -> tuple[da.Array, da.Array]:
    shape = (probe.sizes["y"], probe.sizes["x"])
    composite = da.full(
        (len(MONTHS), len(BANDS), *shape),
        _NAN,
        dtype=np.float32,
        chunks=(1, -1, chunk_size, chunk_size),
    )
    return composite, da.zeros(shape, dtype=np.uint8, chunks=chunk_size)


def _dataset(
    composite: da.Array, valid: da.Array, probe: xr.DataArray, epsg: int, attrs: dict
) -> xr.Dataset:
    """A zarr-ready Dataset: plain coordinates, CRS and transform via rioxarray, JSON attrs."""
    coords = {
        "month": np.array(MONTHS, dtype=np.int8),
        "band": np.array(BANDS, dtype=object),  # zarr 3 specifies variable-length strings only
        "y": probe["y"].values,
        "x": probe["x"].values,
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
    return ds.rio.write_crs(epsg).rio.write_transform(probe.attrs["transform"])
