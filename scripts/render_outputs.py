#!/usr/bin/env python3
"""Open every map of a run in QGIS, as a user would, and render each to a PNG with its legend.

Run it with a Python that has QGIS's bindings (Debian/Ubuntu: ``apt-get install qgis
python3-qgis``, then the system ``python3``); no display is needed:

    python3 scripts/render_outputs.py OUTPUTS_DIR [--png DIR] [--json FILE]

Every ``.tif`` under OUTPUTS_DIR is loaded the way QGIS loads it (with the ``.qml`` beside it as
its default style, and GDAL's ``.aux.xml`` sidecar when present). ``--png`` writes one PNG per
map: the map, its legend and the file name. ``--json`` writes, per map (path relative to
OUTPUTS_DIR), what QGIS made of it: the renderer, the legend entries (label, colour, alpha) and
the colours of the rendered pixels, with the share of transparent ones. The test suite checks
that JSON (tests/test_qgis.py); the PNGs are for people to look at.

Only the standard library and QGIS are used here, so any QGIS Python runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

# Before the first qgis import, which starts Qt: no display is needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    QgsApplication,
    QgsLayoutExporter,
    QgsLayoutItemLabel,
    QgsLayoutItemLegend,
    QgsLayoutItemMap,
    QgsLayoutPoint,
    QgsLayoutSize,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsPrintLayout,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QFont, QImage

MAX_RENDER = 1024  # the longest side, in pixels, that the pixel statistics are taken at
SKIP_DIRS = {"embeddings.zarr", "tiles"}  # stores and per-tile pieces are not maps to look at


def find_maps(root: Path) -> list[Path]:
    """Every GeoTIFF under ``root`` but those inside stores and tile folders."""
    return sorted(
        p for p in root.rglob("*.tif") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1])
    )


def load(path: Path) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), path.stem, "gdal")  # loads <name>.qml as default style
    if not layer.isValid():
        raise SystemExit(f"QGIS cannot open {path}: {layer.error().summary()}")
    return layer


def legend(layer: QgsRasterLayer) -> list[list]:
    """The legend QGIS shows for the layer: [label, "#rrggbb", alpha] per entry."""
    return [
        [label, color.name(), color.alpha()]
        for label, color in layer.renderer().legendSymbologyItems()
    ]


def pixel_colors(layer: QgsRasterLayer) -> dict:
    """Render the layer on a transparent canvas at (about) its own resolution; count colours."""
    width, height = layer.width(), layer.height()
    scale = min(1.0, MAX_RENDER / max(width, height))
    size = QSize(max(1, round(width * scale)), max(1, round(height * scale)))
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(size)
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage().convertToFormat(QImage.Format_ARGB32)
    # ARGB32 pixels are 32-bit words, 0xAARRGGBB; a row may be padded past its pixels.
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    words = memoryview(bytes(bits)).cast("I")
    per_row = image.bytesPerLine() // 4
    counts: Counter[int] = Counter()
    for row in range(image.height()):
        counts.update(words[row * per_row : row * per_row + image.width()])
    total = sum(counts.values())
    transparent = sum(n for word, n in counts.items() if word >> 24 == 0)
    opaque = {f"#{word & 0xFFFFFF:06x}": n for word, n in counts.items() if word >> 24 == 255}
    return {"transparent_fraction": transparent / total, "opaque_colors": opaque}


def describe(path: Path) -> dict:
    layer = load(path)
    return {
        "renderer": layer.renderer().type(),
        "legend": legend(layer),
        "nodata": layer.dataProvider().sourceNoDataValue(1)
        if layer.dataProvider().sourceHasNoDataValue(1)
        else None,
        **pixel_colors(layer),
    }


def render_png(path: Path, title: str, png: Path) -> None:
    """The map beside its legend, on one landscape page, as QGIS's print layout draws them."""
    project = QgsProject.instance()  # a project of one's own leaves the map frame empty in 3.22
    project.removeAllMapLayers()
    layer = load(path)
    project.addMapLayer(layer)
    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    mm = QgsUnitTypes.LayoutMillimeters
    layout.pageCollection().page(0).setPageSize(QgsLayoutSize(297, 210, mm))
    heading = QgsLayoutItemLabel(layout)
    heading.setText(title)
    heading.setFont(QFont("DejaVu Sans", 14))
    layout.addLayoutItem(heading)
    heading.attemptMove(QgsLayoutPoint(8, 6, mm))
    heading.attemptResize(QgsLayoutSize(280, 10, mm))
    frame = QgsLayoutItemMap(layout)
    layout.addLayoutItem(frame)
    frame.attemptMove(QgsLayoutPoint(8, 20, mm))
    frame.attemptResize(QgsLayoutSize(180, 182, mm))
    frame.setLayers([layer])
    frame.setCrs(layer.crs())
    frame.setExtent(layer.extent())
    frame.setFrameEnabled(True)
    key = QgsLayoutItemLegend(layout)
    key.setLinkedMap(frame)
    key.setTitle("Legend")
    layout.addLayoutItem(key)
    key.attemptMove(QgsLayoutPoint(195, 20, mm))
    key.setResizeToContents(True)
    key.setColumnCount(1 if len(legend(layer)) <= 24 else 2)
    # Rendered to an image and saved by Qt: exportToImage would also try to georeference the
    # PNG through GDAL, which cannot update PNG files.
    image = QgsLayoutExporter(layout).renderPageToImage(0, QSize(), 110)
    if not image.save(str(png)):
        raise SystemExit(f"could not write {png}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", type=Path, help="a run's outputs folder (or one region's)")
    parser.add_argument("--png", type=Path, help="folder to write one PNG per map into")
    parser.add_argument("--json", type=Path, help="file to write what QGIS shows, as JSON")
    args = parser.parse_args(argv)
    if not (args.png or args.json):
        parser.error("give --png DIR, --json FILE or both")
    root = args.outputs.resolve()
    maps = find_maps(root)
    if not maps:
        parser.error(f"no .tif files under {root}")
    app = QgsApplication([], False)
    app.initQgis()
    try:
        report = {}
        for path in maps:
            name = path.relative_to(root).as_posix()
            if args.json:
                report[name] = describe(path)
            if args.png:
                args.png.mkdir(parents=True, exist_ok=True)
                png = args.png / (name.removesuffix(".tif").replace("/", "__") + ".png")
                render_png(path, name, png)
                print(png)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
