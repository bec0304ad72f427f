"""How maps look, in one place: the colour rule, class colours and the colour ramps of the
confidence and valid-months layers.

``pipeline.maps.qml`` turns these into QGIS styles, ``pipeline.maps.cog`` into GeoTIFF colour
tables.
"""

from __future__ import annotations

import colorsys
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from timesenclip.common.errors import TimeSenCLIPError

StyledClass = tuple[int, str, str]
"""One class of a map: (pixel value, label, colour as "#rrggbb")."""

_HEX_COLOR = re.compile(r"#([0-9A-Fa-f]{6})")
_GOLDEN = 0.6180339887498949
# Cycling saturation/value as well as hue keeps neighbours in the sequence apart.
_SAT_VAL = ((0.70, 0.90), (0.45, 0.95), (0.85, 0.65))

# Conventional land-cover colours (CORINE / WorldCover-like), keyed by the built-in class names.
CONVENTIONAL_COLORS = {
    "Artificial Land": "#e31a1c",
    "Cropland": "#ffd92f",
    "Woodland": "#1b7837",
    "Shrubland": "#a08c32",
    "Grassland": "#a6d96a",
    "Bare Land": "#c8bea8",
    "Water": "#2b83ba",
    "Wetlands": "#0096a0",
}


class StyleError(TimeSenCLIPError):
    """A colour or class list that cannot be turned into a map style."""


class _Named(Protocol):
    name: str
    color: str | None


def parse_color(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> (r, g, b) in 0..255: the one colour rule of maps and workflows."""
    match = _HEX_COLOR.fullmatch(color) if isinstance(color, str) else None
    if match is None:
        raise StyleError(f"colour {color!r} is not a colour: write '#rrggbb', e.g. '#33a02c'.")
    digits = match.group(1)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def normalize_color(color: str) -> str:
    """A valid colour in its canonical spelling, lower-case ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*parse_color(color))


def palette_color(i: int) -> str:
    """The i-th colour of a deterministic golden-ratio HSV sequence."""
    s, v = _SAT_VAL[i % len(_SAT_VAL)]
    r, g, b = colorsys.hsv_to_rgb((0.05 + i * _GOLDEN) % 1.0, s, v)
    return "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (r, g, b)))


def class_colors(classes: Sequence[_Named]) -> list[str]:
    """One colour per class: its own; else its conventional colour (e.g. "Water") when no other
    class has it; else the next palette colour not already used."""
    chosen = [normalize_color(c.color) if c.color else None for c in classes]
    for i, c in enumerate(classes):
        conventional = CONVENTIONAL_COLORS.get(c.name)
        if chosen[i] is None and conventional and conventional not in chosen:
            chosen[i] = conventional
    taken = set(chosen)
    palette = (p for i in itertools.count() if (p := palette_color(i)) not in taken)
    return [color or next(palette) for color in chosen]


def fill_colors(classes: Sequence[tuple[int, str, str | None]]) -> list[StyledClass]:
    """Check a (value, label, colour) list; a class without a colour gets the palette colour of
    its value, so the same value looks the same in every map."""
    values = [value for value, _, _ in classes]
    if not classes:
        raise StyleError("the class list is empty: give at least one (value, label, colour) entry.")
    if len(set(values)) != len(values):
        raise StyleError(f"class values {values} repeat: every class needs its own pixel value.")
    return [
        (int(value), str(label), normalize_color(color or palette_color(int(value) - 1)))
        for value, label, color in classes
    ]


@dataclass(frozen=True)
class Ramp:
    """The style of a layer of measurements: colour stops ``(value, "#rrggbb", label)`` with the
    labels in the layer's unit, shaded continuously (``interpolated``) or one colour per value
    (``exact``)."""

    stops: tuple[tuple[float, str, str], ...]
    kind: Literal["interpolated", "exact"]
    unit: str

    @property
    def minimum(self) -> float:
        return self.stops[0][0]

    @property
    def maximum(self) -> float:
        return self.stops[-1][0]


def _blend(colors: Sequence[str], t: float) -> str:
    """The colour at ``t`` in 0..1 along evenly spaced ``colors``, mixed linearly in RGB."""
    position = t * (len(colors) - 1)
    i = min(int(position), len(colors) - 2)
    a, b = parse_color(colors[i]), parse_color(colors[i + 1])
    f = position - i
    mixed = (round(x + (y - x) * f) for x, y in zip(a, b, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*mixed)


# Viridis at five stops: dark for uncertain pixels, bright for confident ones; readable in grey.
_VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
# Red (no clear month) through yellow to blue (a clear view every month).
_RDYLBU = ("#d7191c", "#fdae61", "#ffffbf", "#abd9e9", "#2c7bb6")

CONFIDENCE_RAMP = Ramp(
    stops=tuple((25.0 * i, color, f"{25 * i} %") for i, color in enumerate(_VIRIDIS)),
    kind="interpolated",
    unit="percent",
)
VALID_MONTHS_RAMP = Ramp(
    stops=tuple(
        (float(m), _blend(_RDYLBU, m / 12), f"{m} month" + ("" if m == 1 else "s"))
        for m in range(13)
    ),
    kind="exact",
    unit="months",
)
