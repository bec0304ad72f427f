"""Map styling: the colour rule, class colours (own, conventional, palette) and layer ramps."""

import re

import pytest

from encoder.prompts import class_set, class_set_names, resolve_classes
from pipeline.maps.style import (
    CONFIDENCE_RAMP,
    VALID_MONTHS_RAMP,
    StyleError,
    class_colors,
    fill_colors,
    normalize_color,
    palette_color,
    parse_color,
)
from timesenclip.common.errors import TimeSenCLIPError

HEX = re.compile(r"^#[0-9a-f]{6}$")


def test_one_colour_rule():
    assert parse_color("#1F78b4") == (0x1F, 0x78, 0xB4)
    assert normalize_color("#ABCDEF") == "#abcdef"
    for bad in ("abcdef", "#abcde", "#abcdefa", "red", "#ggggggg", 7, None):
        with pytest.raises(StyleError, match="#rrggbb") as raised:
            parse_color(bad)
        assert isinstance(raised.value, TimeSenCLIPError)
    for bad in ("red", "#12345"):  # a class's own colour follows the same rule
        with pytest.raises(StyleError, match="#rrggbb"):
            class_colors(resolve_classes([{"name": "a", "color": bad}]))


@pytest.mark.parametrize("name", class_set_names())
def test_every_builtin_set_gets_distinct_colours(name):
    colors = class_colors(class_set(name))
    assert all(HEX.match(c) for c in colors)
    assert len(set(colors)) == len(colors)


def test_land_cover_colours_are_conventional():
    classes = class_set("land_cover")
    rgb = {c.name: parse_color(col) for c, col in zip(classes, class_colors(classes), strict=True)}
    r, g, b = rgb["Artificial Land"]
    assert r > 200 and g < 80 and b < 80
    r, g, b = rgb["Water"]
    assert b > r and b > g
    r, g, b = rgb["Woodland"]
    assert g > r and g > b and g < 160
    r, g, b = rgb["Cropland"]
    assert r > 200 and g > 180 and b < 100
    assert rgb["Grassland"][1] > rgb["Woodland"][1]


def test_class_colours_keep_own_then_conventional_then_palette():
    classes = resolve_classes(["a", {"name": "b", "color": "#ABCDEF"}, "Water", "d"])
    colors = class_colors(classes)
    assert colors[1] == "#abcdef"
    assert colors[2] == "#2b83ba"  # the conventional water colour, free here
    assert colors[0] == palette_color(0) and colors[3] == palette_color(1)
    assert class_colors(classes) == colors
    # A conventional colour someone else took is not given twice.
    taken = resolve_classes([{"name": "sea", "color": "#2b83ba"}, "Water"])
    assert len(set(class_colors(taken))) == 2


def test_missing_colours_follow_the_pixel_value():
    filled = fill_colors([(1, "a", None), (2, "b", "#00FF00"), (3, "c", None)])
    assert filled == [(1, "a", palette_color(0)), (2, "b", "#00ff00"), (3, "c", palette_color(2))]


def test_ramps_are_labelled_in_their_units():
    assert [v for v, _, _ in CONFIDENCE_RAMP.stops] == [0, 25, 50, 75, 100]
    assert [label for _, _, label in CONFIDENCE_RAMP.stops] == [
        "0 %",
        "25 %",
        "50 %",
        "75 %",
        "100 %",
    ]
    assert (CONFIDENCE_RAMP.minimum, CONFIDENCE_RAMP.maximum) == (0, 100)
    months = VALID_MONTHS_RAMP.stops
    assert [v for v, _, _ in months] == list(range(13)) and VALID_MONTHS_RAMP.kind == "exact"
    assert months[0][2] == "0 months" and months[1][2] == "1 month" and months[12][2] == "12 months"
    assert len({c for _, c, _ in months}) == 13
    # No clear month is red, every month clear is blue.
    r, g, b = parse_color(months[0][1])
    assert r > 200 and b < 50
    r, g, b = parse_color(months[12][1])
    assert b > r and b > g
