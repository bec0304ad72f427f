"""QGIS styles (.qml) that QGIS loads by default beside a raster: classes or a colour ramp."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from pipeline.maps.style import Ramp, StyledClass, fill_colors
from timesenclip.common.atomic import write_text_atomic

QGIS_VERSION = "3.28.0-Firenze"
_RAMP_TYPES = {"interpolated": "INTERPOLATED", "exact": "EXACT"}


def _document(renderer_attrs: dict[str, str]) -> tuple[ET.Element, ET.Element]:
    """A QML document with one raster renderer; returns (root, renderer) for the caller to fill."""
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})
    pipe = ET.SubElement(root, "pipe")
    # Maps of classes and counts must never be interpolated when zoomed: nearest neighbour.
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        {
            "enabled": "false",
            "zoomedInResamplingMethod": "nearestNeighbour",
            "zoomedOutResamplingMethod": "nearestNeighbour",
            "maxOversampling": "2",
        },
    )
    attrs = {"band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": "", **renderer_attrs}
    renderer = ET.SubElement(pipe, "rasterrenderer", attrs)
    ET.SubElement(renderer, "rasterTransparency")
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(root, "blendMode").text = "0"
    return root, renderer


def _text(root: ET.Element) -> str:
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def qml_text(classes: Sequence[StyledClass]) -> str:
    """The QML document of a QGIS paletted renderer showing ``classes`` with their labels."""
    root, renderer = _document({"type": "paletted"})
    palette = ET.SubElement(renderer, "colorPalette")
    for value, label, color in fill_colors(classes):
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(value), "label": label, "color": color, "alpha": "255"},
        )
    return _text(root)


def ramp_qml_text(ramp: Ramp) -> str:
    """The QML document of a QGIS pseudocolour renderer: ``ramp``'s stops, labelled in its unit."""
    low, high = f"{ramp.minimum:g}", f"{ramp.maximum:g}"
    root, renderer = _document(
        {"type": "singlebandpseudocolor", "classificationMin": low, "classificationMax": high}
    )
    origin = ET.SubElement(renderer, "minMaxOrigin")
    ET.SubElement(origin, "limits").text = "None"  # fixed limits: never stretched to the data
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        {
            "colorRampType": _RAMP_TYPES[ramp.kind],
            "classificationMode": "1",
            "clip": "0",
            "minimumValue": low,
            "maximumValue": high,
            "labelPrecision": "0",
        }
    )
    for value, color, label in ramp.stops:
        attrs = {"value": f"{value:g}", "label": label, "color": color, "alpha": "255"}
        ET.SubElement(shader, "item", attrs)
    # The legend lists every stop with its label (a continuous bar would show the ends only).
    ET.SubElement(shader, "rampLegendSettings", {"useContinuousLegend": "0", "suffix": ""})
    return _text(root)


def write_qml(path: Path | str, classes: Sequence[StyledClass]) -> Path:
    """Write the QGIS style for a class map; name it like the .tif (``x.qml``) so QGIS uses it."""
    return write_text_atomic(path, qml_text(classes))


def write_ramp_qml(path: Path | str, ramp: Ramp) -> Path:
    """Write the QGIS style of a layer of measurements (confidence, valid months) beside it."""
    return write_text_atomic(path, ramp_qml_text(ramp))
