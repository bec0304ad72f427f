"""A GDAL VRT mosaic over per-tile COGs of one grid, so QGIS opens a whole region as one layer."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import rasterio
from rasterio.windows import from_bounds

from pipeline.maps.cog import read_category_names
from timesenclip.common.atomic import write_text_atomic


def write_vrt(path: Path | str, tiles: Sequence[Path]) -> Path:
    """Write ``path``: a VRT covering the union of ``tiles`` (same CRS, resolution, dtype, aligned).

    Nodata, colour table and category names come from the first tile; tile paths are relative,
    so the folder can be moved or served as a whole.
    """
    path = Path(path)
    with rasterio.open(tiles[0]) as first:
        crs, res, dtype, nodata = first.crs, first.res, first.dtypes[0], first.nodata
        colormap = _colormap(first)
    boxes = []
    for tile in tiles:
        with rasterio.open(tile) as src:
            boxes.append(src.bounds)
    left = min(b.left for b in boxes)
    top = max(b.top for b in boxes)
    right = max(b.right for b in boxes)
    bottom = min(b.bottom for b in boxes)
    width, height = round((right - left) / res[0]), round((top - bottom) / res[1])
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = f"{left}, {res[0]}, 0, {top}, 0, {-res[1]}"
    band = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype], band="1")
    if nodata is not None:
        ET.SubElement(band, "NoDataValue").text = repr(nodata)
    if colormap:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for value in range(max(colormap) + 1):
            r, g, b, a = colormap.get(value, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
    names = read_category_names(tiles[0])
    if names:
        categories = ET.SubElement(band, "CategoryNames")
        for name in names:
            ET.SubElement(categories, "Category").text = name
    transform = rasterio.transform.from_origin(left, top, *res)
    for tile, box in zip(tiles, boxes, strict=True):
        window = from_bounds(*box, transform=transform).round_offsets().round_lengths()
        source = ET.SubElement(band, "SimpleSource")
        relative = Path(os.path.relpath(Path(tile).resolve(), path.parent.resolve())).as_posix()
        ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = relative
        ET.SubElement(source, "SourceBand").text = "1"
        size = {"xOff": "0", "yOff": "0", "xSize": str(window.width), "ySize": str(window.height)}
        ET.SubElement(source, "SrcRect", size)
        ET.SubElement(
            source,
            "DstRect",
            {**size, "xOff": str(window.col_off), "yOff": str(window.row_off)},
        )
    ET.indent(root)
    return write_text_atomic(path, ET.tostring(root, encoding="unicode") + "\n")


def _colormap(src: rasterio.io.DatasetReader) -> dict[int, tuple[int, int, int, int]]:
    try:
        return src.colormap(1)
    except ValueError:  # no colour table
        return {}


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}
