"""QGIS styles: a paletted renderer with the classes' values, labels and colours."""

import xml.etree.ElementTree as ET

import pytest

from encoder.errors import TimeSenCLIPError
from pipeline.qml import StyleError, fill_colors, generated_color, parse_color, write_qml

CLASSES = [
    (1, "water", "#1F78B4"),
    (2, "tree cover", "#33a02c"),
    (3, 'crops & "grass" <x>', "#ffff64"),
]


def test_qml_is_a_qgis3_paletted_style(tmp_path):
    path = write_qml(tmp_path / "land_cover.qml", CLASSES)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text)
    assert root.tag == "qgis" and root.get("version").startswith("3.")
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.attrib["type"] == "paletted"
    assert (renderer.get("band"), renderer.get("opacity"), renderer.get("alphaBand")) == (
        "1",
        "1",
        "-1",
    )
    entries = [e.attrib for e in renderer.iterfind("colorPalette/paletteEntry")]
    assert [(e["value"], e["label"], e["color"], e["alpha"]) for e in entries] == [
        ("1", "water", "#1f78b4", "255"),
        ("2", "tree cover", "#33a02c", "255"),
        ("3", 'crops & "grass" <x>', "#ffff64", "255"),
    ]
    resampling = root.find("pipe/provider/resampling").attrib
    assert resampling["zoomedOutResamplingMethod"] == "nearestNeighbour"
    assert [p.name for p in tmp_path.iterdir()] == ["land_cover.qml"]


def test_missing_colours_are_generated_stably():
    filled = fill_colors([(1, "a", None), (2, "b", "00ff00"), (3, "c", None)])
    assert filled[1] == (2, "b", "#00ff00")
    assert filled[0][2] == generated_color(1) and filled[2][2] == generated_color(3)
    assert len({color for _, _, color in filled}) == 3
    assert all(0 <= c <= 255 for c in parse_color(generated_color(7)))


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "empty"),
        ([(1, "a", "#000000"), (1, "b", "#ffffff")], "repeat"),
        ([(1, "a", "red")], "not a colour"),
    ],
)
def test_bad_class_lists_are_rejected(tmp_path, classes, message):
    with pytest.raises(StyleError, match=message) as raised:
        write_qml(tmp_path / "x.qml", classes)
    assert isinstance(raised.value, TimeSenCLIPError)
    assert not (tmp_path / "x.qml").exists()
