"""Cloud-Optimized GeoTIFF writers: one array, or a seamless mosaic of tiles on one grid.

What a class map says about itself, and where. A GeoTIFF colour table always has 256 entries for
uint8 pixels, and GDAL 3.10's GeoTIFF driver keeps category names and attribute tables only in a
PAM sidecar (``x.tif.aux.xml``; GDAL stores names inside the TIFF from 3.12 on). So:

- inside the .tif: the colour table (nodata transparent, the classes in their colours, the unused
  entries black) and band metadata items ``CLASS_<value>=<name>`` (``gdalinfo``, rasterio's
  ``tags(1)``, ``read_category_names``);
- in ``x.tif.aux.xml``: ``<CategoryNames>`` and a colour table trimmed to "no data" plus the K
  classes (GDAL, and QGIS through it, prefer these to the TIFF's), and a thematic Raster Attribute
  Table of the K classes (value, name, colour) for tools that read one.

The sidecar is written before the .tif, so a complete .tif always has its sidecar.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.dtypes
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.maps.outputs import CLASS_NODATA, CONFIDENCE_NODATA, NODATA_NAME
from pipeline.maps.style import fill_colors, parse_color
from timesenclip.common.atomic import atomic_path, scratch_path, write_text_atomic
from timesenclip.common.errors import TimeSenCLIPError

OVERVIEW_RESAMPLINGS = ("nearest", "mode", "average", "bilinear", "cubic", "cubicspline", "lanczos")
COMPRESSIONS = ("DEFLATE", "ZSTD", "LZW", "NONE")

_CATEGORY_TAG = "CLASS_"
_RGBA = tuple[int, int, int, int]


class CogError(TimeSenCLIPError):
    """An array or a set of tiles that cannot be written as a Cloud-Optimized GeoTIFF."""


def class_colormap(classes: Sequence[tuple[int, str, str | None]]) -> dict[int, _RGBA]:
    """GDAL colour table for a class map: value 0 transparent, each class opaque in its colour."""
    colormap: dict[int, _RGBA] = {CLASS_NODATA: (0, 0, 0, 0)}
    for value, _, color in fill_colors(classes):
        colormap[value] = (*parse_color(color), 255)
    return colormap


def class_category_names(classes: Sequence[tuple[int, str, str | None]]) -> list[str]:
    """Category names in GDAL's order (index == pixel value): "no data", then the class labels."""
    labels = {value: label for value, label, _ in fill_colors(classes)}
    names = [""] * (max(labels) + 1)
    names[CLASS_NODATA] = NODATA_NAME
    for value, label in labels.items():
        names[value] = label
    return names


def confidence_percent(confidence: np.ndarray) -> np.ndarray:
    """Confidence 0..1 (NaN = none) -> uint8 percent 0..100, ``CONFIDENCE_NODATA`` where NaN."""
    confidence = np.asarray(confidence, dtype=np.float32)
    percent = np.rint(np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0) * 100.0)
    return np.where(np.isnan(confidence), CONFIDENCE_NODATA, percent).astype(np.uint8)


def read_category_names(path: Path | str) -> list[str]:
    """The category names written by ``write_cog`` (index == pixel value; "" where unnamed)."""
    with rasterio.open(path) as src:
        tags = src.tags(1)
    named = {
        int(key.removeprefix(_CATEGORY_TAG)): name
        for key, name in tags.items()
        if key.startswith(_CATEGORY_TAG) and key.removeprefix(_CATEGORY_TAG).isdigit()
    }
    names = [""] * (max(named) + 1 if named else 0)
    for value, name in named.items():
        names[value] = name
    return names


@dataclass(frozen=True)
class _Style:
    """What a written band carries besides its pixels."""

    nodata: float | None
    colormap: Mapping[int, _RGBA] | None
    category_names: Sequence[str] | None
    description: str | None
    units: str | None
    tags: Mapping[str, str]
    scale: float | None = None  # pixel value -> quantity: value * scale + offset (GDAL's rule)
    offset: float | None = None

    def band_tags(self) -> dict[str, str]:
        tags = {k: v for k, v in self.tags.items() if not k.startswith(_CATEGORY_TAG)}
        names = enumerate(self.category_names or [])
        tags.update({f"{_CATEGORY_TAG}{value}": name for value, name in names})
        return {k: v for k, v in tags.items() if v}

    def apply(self, dst: rasterio.io.DatasetWriter) -> None:
        if self.colormap:
            dst.write_colormap(1, dict(self.colormap))
        if self.description:
            dst.set_band_description(1, self.description)
        if self.units:
            dst.set_band_unit(1, self.units)
        band_tags = self.band_tags()
        if band_tags:
            dst.update_tags(1, **band_tags)
        if self.scale is not None:
            dst.scales = (self.scale,)
        if self.offset is not None:
            dst.offsets = (self.offset,)


def _cog_options(
    dtype: np.dtype, overview_resampling: str, compress: str, blocksize: int
) -> dict[str, str | int]:
    if overview_resampling not in OVERVIEW_RESAMPLINGS:
        raise CogError(
            f"overview_resampling {overview_resampling!r} is not supported: use one of "
            f"{', '.join(OVERVIEW_RESAMPLINGS)} ('nearest' or 'mode' for class maps)."
        )
    if compress.upper() not in COMPRESSIONS:
        raise CogError(
            f"compress {compress!r} is not supported: use one of {', '.join(COMPRESSIONS)}."
        )
    if blocksize < 128 or blocksize % 16:
        raise CogError(f"blocksize {blocksize} is not a multiple of 16 from 128 up: use e.g. 512.")
    return {
        "compress": compress.upper(),
        # Differencing pays for continuous floats; class codes and percents compress worse with it.
        "predictor": "YES" if np.issubdtype(dtype, np.floating) else "NO",
        "blocksize": blocksize,
        "overview_resampling": overview_resampling.upper(),
        "bigtiff": "IF_SAFER",
    }


def _check_nodata(nodata: float | None, dtype: np.dtype) -> None:
    if nodata is None:
        return
    if math.isnan(nodata):
        if not np.issubdtype(dtype, np.floating):
            raise CogError(f"nodata NaN needs a float array, got {dtype}: pick an in-range value.")
        return
    fits = rasterio.dtypes.in_dtype_range(nodata, dtype.name)
    # Integer rasters must hold the value exactly; float ones compare it after rounding anyway.
    if not fits or (np.issubdtype(dtype, np.integer) and float(dtype.type(nodata)) != nodata):
        raise CogError(f"nodata {nodata} does not fit a {dtype} raster: pick an in-range value.")


def _check_style(style: _Style, dtype: np.dtype) -> None:
    if style.colormap and dtype not in (np.uint8, np.uint16):
        raise CogError(f"a colour table needs a uint8 or uint16 raster, got {dtype}.")
    _check_nodata(style.nodata, dtype)


# GDAL's Raster Attribute Table codes (gdal.h: GDALRATFieldType, GDALRATFieldUsage).
_RAT_INTEGER, _RAT_STRING = "0", "2"
_RAT_COLUMNS = (  # name, type, usage
    ("Value", _RAT_INTEGER, "5"),  # GFU_MinMax: the pixel value a row describes
    ("Class", _RAT_STRING, "2"),  # GFU_Name
    ("Red", _RAT_INTEGER, "6"),
    ("Green", _RAT_INTEGER, "7"),
    ("Blue", _RAT_INTEGER, "8"),
    ("Alpha", _RAT_INTEGER, "9"),
)


def _write_pam_sidecar(path: Path, style: _Style) -> None:
    """Write (or remove a stale) ``path.aux.xml``: band 1's category names, its colour table
    trimmed to the named values, and an attribute table of the named values but nodata."""
    sidecar = path.with_name(f"{path.name}.aux.xml")
    names = list(style.category_names or [])
    if not names:
        sidecar.unlink(missing_ok=True)  # it described an earlier file at this path
        return
    colormap = dict(style.colormap or {})
    dataset = ET.Element("PAMDataset")
    band = ET.SubElement(dataset, "PAMRasterBand", {"band": "1"})
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    if colormap:
        table = ET.SubElement(band, "ColorTable")
        for value in range(max(len(names), max(colormap) + 1)):
            rgba = colormap.get(value, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", {f"c{i + 1}": str(c) for i, c in enumerate(rgba)})
    rows = [v for v, name in enumerate(names) if name and v != style.nodata]
    rat = ET.SubElement(band, "GDALRasterAttributeTable", {"tableType": "thematic"})
    columns = _RAT_COLUMNS if colormap else _RAT_COLUMNS[:2]
    for index, (name, kind, usage) in enumerate(columns):
        field_defn = ET.SubElement(rat, "FieldDefn", {"index": str(index)})
        for tag, text in (("Name", name), ("Type", kind), ("Usage", usage)):
            ET.SubElement(field_defn, tag).text = text
    for index, value in enumerate(rows):
        row = ET.SubElement(rat, "Row", {"index": str(index)})
        rgba = colormap.get(value, (0, 0, 0, 0))
        for cell in (value, names[value], *rgba)[: len(columns)]:
            ET.SubElement(row, "F").text = str(cell)
    ET.indent(dataset)
    write_text_atomic(sidecar, ET.tostring(dataset, encoding="unicode") + "\n")


def write_cog(
    path: Path | str,
    array: np.ndarray,
    *,
    transform: Affine,
    crs: CRS | str | int,
    nodata: float | None,
    colormap: Mapping[int, _RGBA] | None = None,
    category_names: Sequence[str] | None = None,
    overview_resampling: str = "nearest",
    description: str | None = None,
    units: str | None = None,
    tags: Mapping[str, str] | None = None,
    compress: str = "DEFLATE",
    blocksize: int = 512,
    overviews: bool = True,
    scale: float | None = None,
    offset: float | None = None,
) -> Path:
    """Write a 2-D array as a COG (tiled, internal overviews), atomically; return ``path``.

    ``colormap`` maps pixel values to RGBA; ``category_names[v]`` names pixel value ``v`` (see
    ``class_colormap`` and ``class_category_names``). Overviews halve the size until the smallest
    fits in one ``blocksize`` tile; use ``overview_resampling="nearest"`` or ``"mode"`` for classes.
    ``overviews=False`` leaves them out, for pieces that only ``mosaic_to_cog`` reads.
    ``scale``/``offset`` record how pixel values decode (GDAL: value * scale + offset). A float16
    array is stored as GDAL's half-float Float32 band (NBITS=16; GDAL 3.10 has no Float16 type),
    which keeps its values exactly.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise CogError(f"write_cog needs a non-empty 2-D array (rows, cols), not {array.shape}.")
    style = _Style(
        nodata, colormap, category_names, description, units, dict(tags or {}), scale, offset
    )
    _check_style(style, array.dtype)
    options = _cog_options(array.dtype, overview_resampling, compress, blocksize)
    if not overviews:
        options["overviews"] = "NONE"
    if array.dtype == np.float16:
        array, options["nbits"] = array.astype(np.float32), 16
    profile = {
        "driver": "COG",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": CRS.from_user_input(crs),
        "transform": transform,
        "nodata": nodata,
    }
    _write_pam_sidecar(path, style)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile, **options) as dst:
        dst.write(array, 1)
        style.apply(dst)
    return path


@dataclass(frozen=True)
class _Tile:
    path: Path
    window: Window  # where the tile lands in the mosaic


@dataclass(frozen=True)
class _Mosaic:
    tiles: list[_Tile]
    transform: Affine
    width: int
    height: int
    crs: CRS
    dtype: np.dtype


def _grid_key(src: rasterio.io.DatasetReader) -> tuple:
    nodata = "nan" if src.nodata is not None and math.isnan(src.nodata) else src.nodata
    return src.crs, src.count, src.dtypes, nodata


def _plan_mosaic(tile_paths: Sequence[Path]) -> _Mosaic:
    """Check that tiles share one grid and do not overlap; place each in the union."""
    if not tile_paths:
        raise CogError("mosaic_to_cog got no tiles: pass at least one GeoTIFF path.")
    headers = []
    for tile_path in tile_paths:
        with rasterio.open(tile_path) as src:
            if src.transform.b or src.transform.d:
                raise CogError(f"tile {tile_path} is rotated: mosaics need north-up tiles.")
            headers.append((Path(tile_path), _grid_key(src), src.transform, src.width, src.height))
    first_path, first_key, first_transform, _, _ = headers[0]
    crs, count, dtypes, _ = first_key
    if count != 1:
        raise CogError(f"mosaic_to_cog needs single-band tiles, {first_path} has {count} bands.")
    for tile_path, key, _, _, _ in headers[1:]:
        if key != first_key:
            raise CogError(
                f"tile {tile_path} has (crs, bands, dtypes, nodata) = {key}, but {first_path} has "
                f"{first_key}: mosaic only tiles of one UTM zone written the same way."
            )
    xres, yres = first_transform.a, first_transform.e
    for tile_path, _, transform, _, _ in headers[1:]:
        if not (math.isclose(transform.a, xres) and math.isclose(transform.e, yres)):
            raise CogError(
                f"tile {tile_path} has pixel size ({transform.a}, {transform.e}), but {first_path} "
                f"has ({xres}, {yres}): mosaic only tiles of one resolution."
            )
    left = min(t.c for _, _, t, _, _ in headers)
    top = max(t.f for _, _, t, _, _ in headers)
    tiles, extents = [], []
    for tile_path, _, transform, width, height in headers:
        col, row = (transform.c - left) / xres, (transform.f - top) / yres
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise CogError(
                f"tile {tile_path} is misaligned: its origin ({transform.c}, {transform.f}) is "
                f"{col:.4f}, {row:.4f} pixels from the mosaic origin, not a whole number. Cut "
                "tiles from one pixel grid."
            )
        window = Window(round(col), round(row), width, height)
        tiles.append(_Tile(tile_path, window))
        row0, col0 = window.row_off, window.col_off
        extents.append((row0, col0, row0 + height, col0 + width))
    _check_no_overlap(tiles, np.array(extents))
    return _Mosaic(
        tiles=tiles,
        transform=Affine(xres, 0.0, left, 0.0, yres, top),
        width=int(max(e[3] for e in extents)),
        height=int(max(e[2] for e in extents)),
        crs=crs,
        dtype=np.dtype(dtypes[0]),
    )


def _check_no_overlap(tiles: Sequence[_Tile], extents: np.ndarray) -> None:
    r0, c0, r1, c1 = extents.T
    overlap = (
        (r0[:, None] < r1[None, :])
        & (r0[None, :] < r1[:, None])
        & (c0[:, None] < c1[None, :])
        & (c0[None, :] < c1[:, None])
    )
    np.fill_diagonal(overlap, False)
    if overlap.any():
        i, j = np.argwhere(overlap)[0]
        raise CogError(
            f"tiles {tiles[i].path} and {tiles[j].path} overlap: each pixel must come from one "
            "tile, so pass non-overlapping tiles."
        )


def _inherited_style(
    first_tile: Path,
    colormap: Mapping[int, _RGBA] | None,
    category_names: Sequence[str] | None,
    description: str | None,
    *,
    units: str | None = None,
    tags: Mapping[str, str] | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> _Style:
    with rasterio.open(first_tile) as src:
        try:
            tile_colormap = src.colormap(1)
        except ValueError:  # rasterio's way of saying "no colour table"
            tile_colormap = None
        return _Style(
            nodata=src.nodata,
            colormap=colormap if colormap is not None else tile_colormap,
            category_names=(
                category_names if category_names is not None else read_category_names(first_tile)
            ),
            description=description if description is not None else src.descriptions[0],
            units=units if units is not None else src.units[0],
            tags={**src.tags(1), **(tags or {})},
            scale=scale,
            offset=offset,
        )


def mosaic_to_cog(
    tile_paths: Sequence[Path | str],
    path: Path | str,
    *,
    colormap: Mapping[int, _RGBA] | None = None,
    category_names: Sequence[str] | None = None,
    description: str | None = None,
    overview_resampling: str = "nearest",
    compress: str = "DEFLATE",
    blocksize: int = 512,
    units: str | None = None,
    tags: Mapping[str, str] | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> Path:
    """Join single-band tiles on one grid (same CRS and resolution, aligned, non-overlapping) into
    one COG covering their union; return ``path``.

    Pixels are copied block by block, so memory stays bounded however large the mosaic. Colour
    table, category names, description and units default to the first tile's, ``tags`` are added
    to its band metadata, ``scale``/``offset`` are as in ``write_cog``; nodata comes from it.
    Parts of the union that no tile covers read as nodata (0 when the tiles have none).
    """
    path = Path(path)
    tile_paths = [Path(p) for p in tile_paths]
    plan = _plan_mosaic(tile_paths)
    style = _inherited_style(
        tile_paths[0],
        colormap,
        category_names,
        description,
        units=units,
        tags=tags,
        scale=scale,
        offset=offset,
    )
    _check_style(style, plan.dtype)
    options = _cog_options(plan.dtype, overview_resampling, compress, blocksize)
    scratch_profile = {
        "driver": "GTiff",
        "width": plan.width,
        "height": plan.height,
        "count": 1,
        "dtype": plan.dtype.name,
        "crs": plan.crs,
        "transform": plan.transform,
        "nodata": style.nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": "ZSTD",
        "zstd_level": 1,
        "sparse_ok": True,  # blocks no tile touches stay unwritten and read as nodata
        "bigtiff": "IF_SAFER",
    }
    _write_pam_sidecar(path, style)
    with scratch_path(path, ".tif") as scratch:
        with rasterio.open(scratch, "w", **scratch_profile) as dst:
            style.apply(dst)
            for tile in plan.tiles:
                with rasterio.open(tile.path) as src:
                    for _, block in src.block_windows(1):
                        target = Window(
                            tile.window.col_off + block.col_off,
                            tile.window.row_off + block.row_off,
                            block.width,
                            block.height,
                        )
                        dst.write(src.read(1, window=block), 1, window=target)
        with atomic_path(path) as tmp:
            rasterio.shutil.copy(scratch, tmp, driver="COG", **options)
    return path
