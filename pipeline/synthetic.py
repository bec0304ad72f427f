"""Small synthetic Sentinel-2 L2A scenes: per-band COGs, SCL with clouds, Earth Search v1 items.

Used by tests, benchmarks and ``timesenclip demo``. Everything is deterministic from ``seed``.
The grid is split into four land-cover quadrants (``LAND_CLASSES``, top-left, top-right,
bottom-left, bottom-right) with smooth, class-specific seasonal spectra, so a classifier map of
the result has visible structure. Each scene covers a share of its pixels (drawn around the mean
``cloud_fraction``; 0 and 1 are exact) with cloud (SCL 9, bright) and thin cirrus (SCL 10,
brightened) blobs, casts shadows (SCL 3, darkened) beside them, and marks the rest clear:
vegetation (4) on forest and cropland, not-vegetated (5) on water and built-up land.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds, transform_geom

from encoder.errors import TimeSenCLIPError
from encoder.preprocess import BANDS
from pipeline.harmonize import harmonization
from pipeline.sentinel2 import BANDS_20M
from pipeline.stac import EARTH_SEARCH_ASSETS

LAND_CLASSES = ("forest", "cropland", "water", "built-up")
SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_CLOUD, SCL_CIRRUS = 3, 4, 5, 9, 10
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

# Reflectance x 10000 in BANDS order: end-members the class curves mix between.
_SOIL = (900, 1100, 1300, 1500, 1650, 1750, 1850, 1950, 2700, 2200)
_LEAF = (250, 550, 300, 900, 2400, 3000, 3300, 3500, 1700, 800)
_WATER = (600, 500, 350, 300, 250, 220, 200, 180, 120, 100)
_BUILT = (1200, 1300, 1400, 1500, 1600, 1700, 1800, 1850, 2200, 2000)
_CLOUD_DN = (6500, 8000)
_CIRRUS_ADD = 1500
_SHADOW_GAIN = 0.4


@dataclass(frozen=True)
class SyntheticScene:
    """One acquisition as written: ``dn`` (10, H, W) and ``scl`` (H, W) at 10 m, stored values."""

    id: str
    datetime: datetime.datetime
    dn: np.ndarray
    scl: np.ndarray
    processing_baseline: str
    boa_offset_applied: bool | None


@dataclass(frozen=True)
class SyntheticCollection:
    """The collection and item dicts, the scenes behind them, and their shared 10 m grid."""

    collection: dict
    items: list[dict]
    scenes: list[SyntheticScene]
    epsg: int
    bounds: tuple[float, float, float, float]
    resolution: float
    land_cover: np.ndarray | None = None  # (H, W) uint8 index into LAND_CLASSES


def default_dates(year: int = 2023) -> list[datetime.date]:
    """Two acquisitions per month (the 5th and the 20th) over ``year``."""
    return [datetime.date(year, month, day) for month in range(1, 13) for day in (5, 20)]


def write_synthetic_collection(
    root: Path,
    *,
    epsg: int = 32631,
    origin: tuple[float, float] = (500000.0, 4800000.0),
    shape: tuple[int, int] = (64, 64),
    dates: Sequence[datetime.date] | None = None,
    cloud_fraction: float = 0.25,
    processing_baseline: str = "05.09",
    boa_offset_applied: bool | None = True,
    seed: int = 0,
    native_20m: bool = True,
) -> SyntheticCollection:
    """Write one COG per band and SCL per date under ``root`` and return the STAC dicts.

    ``origin`` is the upper-left corner in the ``epsg`` CRS; the grid is 10 m. Stored digital
    numbers carry +1000 when the item's own metadata says so (baseline >= 04.00 and the offset not
    already applied), exactly as the harmonisation rule will read them back.
    """
    dates = list(default_dates() if dates is None else dates)
    _check_arguments(shape, dates, cloud_fraction, native_20m)
    root = Path(root).resolve()
    height, width = shape
    transform = Affine(10.0, 0.0, origin[0], 0.0, -10.0, origin[1])
    bounds = (origin[0], origin[1] - 10.0 * height, origin[0] + 10.0 * width, origin[1])
    lonlat_bbox = list(transform_bounds(f"EPSG:{epsg}", "EPSG:4326", *bounds))
    footprint = transform_geom(f"EPSG:{epsg}", "EPSG:4326", _box(bounds))

    rng = np.random.default_rng(seed)
    land_cover = _land_cover(shape)
    texture = rng.normal(1.0, 0.05, size=shape)
    scl_factor = 2 if native_20m else 1
    items, scenes = [], []
    for index, date in enumerate(dates):
        when = datetime.datetime.combine(date, datetime.time(10, 30), tzinfo=datetime.UTC)
        item_id = f"S2{'AB'[index % 2]}_SYN_{date:%Y%m%d}_0_L2A"
        props = {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": f"sentinel-2{'ab'[index % 2]}",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "proj:epsg": epsg,
            "proj:code": f"EPSG:{epsg}",
            "s2:processing_baseline": processing_baseline,
        }
        if boa_offset_applied is not None:
            props["earthsearch:boa_offset_applied"] = boa_offset_applied
        offset = harmonization({"id": item_id, "properties": props}).offset

        # Cloud cover varies by scene around the mean, so a cloud-cover filter has work to do.
        spread = min(cloud_fraction, 1.0 - cloud_fraction)
        fraction = cloud_fraction + rng.uniform(-spread, spread)
        scl = _scl(rng, land_cover[::scl_factor, ::scl_factor], fraction)
        scl = np.kron(scl, np.ones((scl_factor, scl_factor), dtype=np.uint8))
        clear = _clear_dn(land_cover, texture, date.timetuple().tm_yday)
        dn = _with_clouds(clear * rng.normal(1.0, 0.02, size=shape), scl, rng) + offset
        for band_index, band in enumerate(BANDS):
            if native_20m and band in BANDS_20M:
                dn[band_index] = np.kron(dn[band_index, ::2, ::2], np.ones((2, 2), dtype=np.uint16))
        props["eo:cloud_cover"] = round(
            100.0 * float(np.isin(scl, (SCL_CLOUD, SCL_CIRRUS)).mean()), 4
        )

        folder = root / item_id
        folder.mkdir(parents=True, exist_ok=True)
        assets = {}
        for band_index, band in enumerate((*BANDS, "SCL")):
            coarse = native_20m and band in (*BANDS_20M, "SCL")
            step = 2 if coarse else 1
            data = scl if band == "SCL" else dn[band_index]
            path = folder / f"{band}.tif"
            asset_transform = transform @ Affine.scale(step)
            _write_cog(path, data[::step, ::step], asset_transform, epsg)
            assets[EARTH_SEARCH_ASSETS[band]] = _asset(
                path, band, data[::step, ::step].shape, asset_transform, bounds, 10.0 * step
            )
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "stac_extensions": STAC_EXTENSIONS,
                "id": item_id,
                "collection": "sentinel-2-l2a",
                "geometry": footprint,
                "bbox": lonlat_bbox,
                "properties": props,
                "assets": assets,
                "links": [],
            }
        )
        scenes.append(
            SyntheticScene(item_id, when, dn, scl, processing_baseline, boa_offset_applied)
        )
    return SyntheticCollection(
        collection=_collection(lonlat_bbox, scenes),
        items=items,
        scenes=scenes,
        epsg=epsg,
        bounds=bounds,
        resolution=10.0,
        land_cover=land_cover,
    )


def _check_arguments(
    shape: tuple[int, int], dates: list[datetime.date], cloud_fraction: float, native_20m: bool
) -> None:
    if len(shape) != 2 or min(shape) < 2 or (native_20m and (shape[0] % 2 or shape[1] % 2)):
        raise TimeSenCLIPError(
            f"synthetic shape {shape} is not usable: give (height, width) of at least 2 pixels, "
            "both even when native_20m=True (20 m bands halve the grid)."
        )
    if not dates or len(set(dates)) != len(dates):
        raise TimeSenCLIPError(
            f"synthetic dates must be a non-empty list of distinct dates, got {dates!r}."
        )
    if not 0.0 <= cloud_fraction <= 1.0:
        raise TimeSenCLIPError(f"cloud_fraction must be within 0..1, got {cloud_fraction}.")


def _box(bounds: tuple[float, float, float, float]) -> dict:
    xmin, ymin, xmax, ymax = bounds
    ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
    return {"type": "Polygon", "coordinates": [ring]}


def _land_cover(shape: tuple[int, int]) -> np.ndarray:
    """Quadrants on even pixel boundaries, so 20 m pixels never straddle two classes."""
    height, width = shape
    top = np.arange(height)[:, None] < (height // 4) * 2
    left = np.arange(width)[None, :] < (width // 4) * 2
    return np.where(top, np.where(left, 0, 1), np.where(left, 2, 3)).astype(np.uint8)


def _bell(day: int, peak: float, width: float) -> float:
    return float(np.exp(-0.5 * ((day - peak) / width) ** 2))


def _class_spectra(day: int) -> np.ndarray:
    """(4, 10) clear-sky reflectance x 10000 per land class on day-of-year ``day``."""
    soil, leaf = np.asarray(_SOIL, float), np.asarray(_LEAF, float)
    forest = 0.6 + 0.4 * _bell(day, 190, 60)  # evergreen share plus a summer flush
    crop = 0.05 + 0.95 * _bell(day, 165, 30)  # sown in spring, harvested in July
    return np.stack(
        [
            soil + forest * (leaf - soil),
            soil + crop * (leaf - soil),
            np.asarray(_WATER, float),
            np.asarray(_BUILT, float),
        ]
    )


def _clear_dn(land_cover: np.ndarray, texture: np.ndarray, day: int) -> np.ndarray:
    """(10, H, W) float clear-sky values: class spectrum x a fixed per-pixel texture."""
    return np.moveaxis(_class_spectra(day)[land_cover], -1, 0) * texture


def _scl(rng: np.random.Generator, land_cover: np.ndarray, cloud_fraction: float) -> np.ndarray:
    """SCL on the given grid: Gaussian cloud blobs covering ``cloud_fraction``, shadows beside."""
    height, width = land_cover.shape
    scl = np.where(land_cover < 2, SCL_VEGETATION, SCL_NOT_VEGETATED).astype(np.uint8)
    if cloud_fraction <= 0.0:
        return scl
    yy, xx = np.mgrid[0:height, 0:width]
    field = np.zeros((height, width))
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.1, 0.3) * max(height, width)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    field += rng.uniform(0, 1e-6, size=field.shape)  # breaks ties so quantiles cut exactly
    order = np.argsort(field, axis=None)[::-1]
    n_cloud = round(cloud_fraction * field.size)
    cloudy = np.zeros(field.size, dtype=bool)
    cloudy[order[:n_cloud]] = True
    cirrus = np.zeros(field.size, dtype=bool)
    cirrus[order[n_cloud * 2 // 3 : n_cloud]] = True  # the thin outer third of each cloud
    cloudy, cirrus = cloudy.reshape(field.shape), cirrus.reshape(field.shape)
    shift = (max(1, height // 8), max(1, width // 8))
    shadow = np.roll(cloudy, shift, axis=(0, 1)) & ~cloudy
    scl[shadow] = SCL_SHADOW
    scl[cloudy] = SCL_CLOUD
    scl[cirrus] = SCL_CIRRUS
    return scl


def _with_clouds(clear: np.ndarray, scl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stored uint16 values before any offset: clouds bright, cirrus brighter, shadows darker."""
    dn = clear.copy()
    thick = scl == SCL_CLOUD
    dn[:, thick] = rng.uniform(*_CLOUD_DN, size=(dn.shape[0], int(thick.sum())))
    dn[:, scl == SCL_CIRRUS] += _CIRRUS_ADD
    dn[:, scl == SCL_SHADOW] *= _SHADOW_GAIN
    return np.clip(np.rint(dn), 1, 20000).astype(np.uint16)


def _write_cog(path: Path, data: np.ndarray, transform: Affine, epsg: int) -> None:
    # GTiff with 16-pixel tiles (the COG driver warns below 128) gives these tiny rasters real
    # internal tiles and overviews; nearest keeps SCL classes and stored values exact.
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=0,
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
    ) as dst:
        dst.write(data, 1)
        dst.build_overviews([f for f in (2, 4) if min(data.shape) // f >= 2], Resampling.nearest)


def _asset(
    path: Path,
    band: str,
    shape: tuple[int, int],
    transform: Affine,
    bounds: tuple[float, float, float, float],
    resolution: float,
) -> dict:
    key = EARTH_SEARCH_ASSETS[band]
    if band == "SCL":
        raster = {"nodata": 0, "data_type": "uint8", "spatial_resolution": resolution}
        extra: dict = {"title": "Scene classification map (SCL)", "roles": ["data"]}
    else:
        # Earth Search v1 publishes scale 0.0001 / offset -0.1 on every reflectance band.
        raster = {
            "nodata": 0,
            "data_type": "uint16",
            "spatial_resolution": resolution,
            "scale": 0.0001,
            "offset": -0.1,
        }
        extra = {
            "title": f"{band} - {resolution:g}m",
            "eo:bands": [{"name": key, "common_name": key}],
            "roles": ["data", "reflectance"],
        }
    return {
        "href": str(path),
        "type": COG_MEDIA_TYPE,
        **extra,
        "gsd": resolution,
        "proj:shape": list(shape),
        "proj:transform": list(transform)[:6],
        "proj:bbox": list(bounds),
        "raster:bands": [raster],
    }


def _collection(lonlat_bbox: list[float], scenes: list[SyntheticScene]) -> dict:
    times = sorted(scene.datetime for scene in scenes)
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": "sentinel-2-l2a",
        "title": "Synthetic Sentinel-2 L2A",
        "description": "Synthetic Sentinel-2 L2A scenes for timesenclip tests and demos.",
        "license": "CC0-1.0",
        "extent": {
            "spatial": {"bbox": [lonlat_bbox]},
            "temporal": {
                "interval": [[t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (times[0], times[-1])]]
            },
        },
        "links": [],
    }
