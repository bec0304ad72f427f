"""QGIS styles: a paletted renderer for classes, a pseudocolour ramp for measurements."""

import xml.etree.ElementTree as ET

import pytest

from pipeline.maps.qml import write_qml, write_ramp_qml
from pipeline.maps.style import CONFIDENCE_RAMP, VALID_MONTHS_RAMP, StyleError
from timesenclip.common.errors import TimeSenCLIPError

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


def test_ramp_qml_lists_every_stop_with_its_unit(tmp_path):
    path = write_ramp_qml(tmp_path / "land_cover_confidence.qml", CONFIDENCE_RAMP)
    root = ET.fromstring(path.read_text(encoding="utf-8"))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor"
    assert (renderer.get("classificationMin"), renderer.get("classificationMax")) == ("0", "100")
    assert renderer.findtext("minMaxOrigin/limits") == "None"  # never re-stretched to the data
    shader = renderer.find("rastershader/colorrampshader")
    assert shader.get("colorRampType") == "INTERPOLATED"
    items = [(i.get("value"), i.get("label")) for i in shader.iterfind("item")]
    assert items == [("0", "0 %"), ("25", "25 %"), ("50", "50 %"), ("75", "75 %"), ("100", "100 %")]
    assert shader.find("rampLegendSettings").get("useContinuousLegend") == "0"

    months = ET.fromstring(
        write_ramp_qml(tmp_path / "valid_months.qml", VALID_MONTHS_RAMP).read_text()
    )
    shader = months.find("pipe/rasterrenderer/rastershader/colorrampshader")
    assert shader.get("colorRampType") == "EXACT"
    labels = [i.get("label") for i in shader.iterfind("item")]
    assert labels[:2] == ["0 months", "1 month"] and labels[-1] == "12 months" and len(labels) == 13


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "empty"),
        ([(1, "a", "#000000"), (1, "b", "#ffffff")], "repeat"),
        ([(1, "a", "red")], "not a colour"),
        ([(1, "a", "00ff00")], "#rrggbb"),
    ],
)
def test_bad_class_lists_are_rejected(tmp_path, classes, message):
    with pytest.raises(StyleError, match=message) as raised:
        write_qml(tmp_path / "x.qml", classes)
    assert isinstance(raised.value, TimeSenCLIPError)
    assert not (tmp_path / "x.qml").exists()
