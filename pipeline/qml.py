"""Class colours and the QGIS style (.qml) that QGIS loads by default beside a class map."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from encoder.atomic import write_text_atomic
from encoder.errors import TimeSenCLIPError
from encoder.prompts import palette_color

ClassEntry = tuple[int, str, str]
"""One class of a map: (pixel value, label, colour as "#rrggbb")."""

QGIS_VERSION = "3.28.0-Firenze"
_HEX_COLOR = re.compile(r"^#?([0-9A-Fa-f]{6})$")


class StyleError(TimeSenCLIPError):
    """A class list that cannot be turned into a map style."""


def parse_color(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` (or ``"rrggbb"``) -> (r, g, b) in 0..255."""
    match = _HEX_COLOR.match(color)
    if match is None:
        raise StyleError(f"colour {color!r} is not a colour: write '#rrggbb', e.g. '#33a02c'.")
    digits = match.group(1)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def generated_color(value: int) -> str:
    """A stable colour for a class that has none: the class palette's colour for that value."""
    return palette_color(value - 1)


def fill_colors(classes: Sequence[tuple[int, str, str | None]]) -> list[ClassEntry]:
    """Check a class list and give every class without a colour a generated one."""
    values = [value for value, _, _ in classes]
    if not classes:
        raise StyleError("the class list is empty: give at least one (value, label, colour) entry.")
    if len(set(values)) != len(values):
        raise StyleError(f"class values {values} repeat: every class needs its own pixel value.")
    filled = []
    for value, label, color in classes:
        if color is None:
            color = generated_color(value)
        filled.append((int(value), str(label), "#{:02x}{:02x}{:02x}".format(*parse_color(color))))
    return filled


def qml_text(classes: Sequence[ClassEntry], band: int = 1) -> str:
    """The QML document of a QGIS paletted renderer showing ``classes`` with their labels."""
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})
    pipe = ET.SubElement(root, "pipe")
    # Class maps must never be interpolated when zoomed: nearest neighbour both ways.
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
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {
            "type": "paletted",
            "band": str(band),
            "opacity": "1",
            "alphaBand": "-1",
            "nodataColor": "",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, label, color in fill_colors(classes):
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(value), "label": label, "color": color, "alpha": "255"},
        )
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def write_qml(path: Path | str, classes: Sequence[ClassEntry]) -> Path:
    """Write the QGIS style for a class map; name it like the .tif (``x.qml``) so QGIS uses it."""
    return write_text_atomic(path, qml_text(classes))


# --- Continuous colour ramps (similarity and change maps) -------------------------------------


def ramp_qml_text(stops: Sequence[tuple[float, str, str]], band: int = 1) -> str:
    """The QML of a QGIS pseudocolour renderer interpolating ``(value, label, colour)`` stops.

    Values are in the quantity's units: QGIS applies a band's GDAL scale and offset before it
    renders, so a uint8 map with scale/offset and a float map take the same stops.
    """
    if len(stops) < 2:
        raise StyleError("a colour ramp needs at least two (value, label, colour) stops.")
    values = [float(v) for v, _, _ in stops]
    if values != sorted(values):
        raise StyleError(f"colour ramp stops {values} must be given from low to high.")
    low, high = f"{values[0]:.8g}", f"{values[-1]:.8g}"
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {
            "type": "singlebandpseudocolor",
            "band": str(band),
            "opacity": "1",
            "alphaBand": "-1",
            "classificationMin": low,
            "classificationMax": high,
            "nodataColor": "",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    # Fixed limits: the stops are the legend, QGIS must not re-stretch them to the data.
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Exact")):
        ET.SubElement(origin, tag).text = text
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        {
            "colorRampType": "INTERPOLATED",
            "classificationMode": "1",
            "clip": "0",
            "minimumValue": low,
            "maximumValue": high,
        }
    )
    for value, label, color in stops:
        r, g, b = parse_color(color)
        ET.SubElement(
            shader,
            "item",
            {
                "value": f"{value:.8g}",
                "label": label,
                "color": f"#{r:02x}{g:02x}{b:02x}",
                "alpha": "255",
            },
        )
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def write_ramp_qml(path: Path | str, stops: Sequence[tuple[float, str, str]]) -> Path:
    """Write the colour-ramp QGIS style of a continuous map, named like its .tif."""
    return write_text_atomic(path, ramp_qml_text(stops))
