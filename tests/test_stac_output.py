"""STAC Items for class maps: classification classes, projection, footprint, relative assets."""

import json

import numpy as np
import pystac
import pytest
from affine import Affine
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from rasterio.warp import transform_bounds

from pipeline.maps.cog import class_category_names, class_colormap, confidence_percent, write_cog
from pipeline.maps.qml import write_qml, write_ramp_qml
from pipeline.maps.stac_items import StacOutputError, class_item, write_item
from pipeline.maps.style import CONFIDENCE_RAMP

CLASSES = [(1, "water", "#1f78b4"), (2, "tree cover", "#33a02c"), (3, "crops/grass", "#ffff64")]
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0)


@pytest.fixture
def outputs(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (30, 50)).astype(np.uint8)
    common = {"transform": TRANSFORM, "crs": 32631}
    write_cog(
        tmp_path / "land_cover.tif",
        labels,
        nodata=0,
        colormap=class_colormap(CLASSES),
        category_names=class_category_names(CLASSES),
        **common,
    )
    confidence = confidence_percent(rng.random((30, 50)))
    write_cog(tmp_path / "land_cover_confidence.tif", confidence, nodata=255, **common)
    write_cog(tmp_path / "valid_months.tif", np.full((30, 50), 12, np.uint8), nodata=None, **common)
    write_qml(tmp_path / "land_cover.qml", CLASSES)
    write_ramp_qml(tmp_path / "land_cover_confidence.qml", CONFIDENCE_RAMP)
    return tmp_path, labels


def test_item_round_trips_with_classes_and_projection(outputs):
    folder, labels = outputs
    item = class_item(
        "montpellier-land_cover-2023",
        folder / "land_cover.tif",
        CLASSES,
        year=2023,
        title="Land cover 2023",
        class_descriptions={1: "open water"},
        confidence_path=folder / "land_cover_confidence.tif",
        valid_months_path=folder / "valid_months.tif",
        properties={"timesenclip:task": "land_cover"},
    )
    path = write_item(item, folder / "land_cover.json")
    record = json.loads(path.read_text())
    back = pystac.Item.from_dict(record)

    assert back.id == "montpellier-land_cover-2023" and back.datetime is None
    assert record["properties"]["start_datetime"] == "2023-01-01T00:00:00Z"
    assert record["properties"]["end_datetime"] == "2023-12-31T23:59:59Z"
    assert record["properties"]["timesenclip:task"] == "land_cover"
    assert {a: back.assets[a].href for a in back.assets} == {
        "data": "./land_cover.tif",
        "confidence": "./land_cover_confidence.tif",
        "valid_months": "./valid_months.tif",
        "style": "./land_cover.qml",
        "aux_xml": "./land_cover.tif.aux.xml",
        "confidence_style": "./land_cover_confidence.qml",
    }
    # Every file beside the map is listed: nothing is left for a copy of the item to miss.
    assert {f"./{p.name}" for p in folder.iterdir()} - {"./land_cover.json"} == {
        a.href for a in back.assets.values()
    }
    assert back.assets["aux_xml"].media_type == pystac.MediaType.XML
    data = back.assets["data"]
    assert data.media_type == pystac.MediaType.COG and data.roles == ["data"]

    classes = ClassificationExtension.ext(data).classes
    counts = np.bincount(labels.ravel(), minlength=4)
    assert [(c.value, c.name, c.title) for c in classes] == [
        (0, "nodata", "no data"),
        (1, "water", "water"),
        (2, "tree_cover", "tree cover"),
        (3, "crops_grass", "crops/grass"),
    ]
    assert classes[0].nodata is True
    assert [c.color_hint for c in classes[1:]] == ["1F78B4", "33A02C", "FFFF64"]
    assert classes[1].description == "open water"
    assert [c.count for c in classes] == counts.tolist()
    assert [c.percentage for c in classes] == pytest.approx(100 * counts / labels.size, abs=1e-4)

    proj = ProjectionExtension.ext(back)
    assert proj.code == "EPSG:32631" and proj.shape == [30, 50]
    assert proj.transform == [10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0]
    assert proj.bbox == [500000.0, 4799700.0, 500500.0, 4800000.0]
    assert back.bbox == pytest.approx(
        transform_bounds(32631, 4326, 500000.0, 4799700.0, 500500.0, 4800000.0), abs=1e-6
    )
    ring = np.array(back.geometry["coordinates"][0])
    assert ring[0].tolist() == ring[-1].tolist()
    assert (ring[:, 0] >= back.bbox[0] - 1e-7).all() and (ring[:, 0] <= back.bbox[2] + 1e-7).all()
    assert (ring[:, 1] >= back.bbox[1] - 1e-7).all() and (ring[:, 1] <= back.bbox[3] + 1e-7).all()

    assert RasterExtension.ext(data).bands[0].nodata == 0
    assert RasterExtension.ext(back.assets["confidence"]).bands[0].nodata == 255
    assert RasterExtension.ext(back.assets["valid_months"]).bands[0].nodata is None
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_only_uint8_class_maps_are_described(tmp_path):
    write_cog(
        tmp_path / "f.tif",
        np.zeros((4, 4), np.float32),
        transform=TRANSFORM,
        crs=32631,
        nodata=None,
    )
    with pytest.raises(StacOutputError, match="uint8"):
        class_item("x", tmp_path / "f.tif", CLASSES, year=2023)
