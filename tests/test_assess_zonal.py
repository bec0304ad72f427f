"""`timesenclip areas`: class areas inside polygons, partial pixels by the fraction covered."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point, Polygon, box

from fixtures.classmaps import CRS, ORIGIN, write_class_map
from pipeline.assess.zonal import zonal_areas
from pipeline.cli import main
from timesenclip.common.errors import TimeSenCLIPError

LEFT, TOP = ORIGIN


@pytest.fixture(scope="module")
def half_and_half(tmp_path_factory):
    """10 x 10 pixels of 10 m: cropland west of 50 m, woodland east, the north-west pixel
    nodata."""
    classes = np.ones((10, 10), np.uint8)
    classes[:, 5:] = 2
    classes[0, 0] = 0
    path = tmp_path_factory.mktemp("zonal") / "land_cover.tif"
    return write_class_map(path, classes, ["Cropland", "Woodland"])


def zones() -> gpd.GeoDataFrame:
    """Three zones in the map's CRS, with the areas (m²) of cropland and woodland in each."""
    return gpd.GeoDataFrame(
        {
            "name": ["west strip", "centre square", "triangle"],
            "cropland_m2": [4500 - 100, 1250, 3750 - 50],
            "woodland_m2": [0, 1250, 1250],
        },
        geometry=[
            box(LEFT, TOP - 100, LEFT + 45, TOP),  # 4.5 columns, the nodata pixel among them
            box(LEFT + 25, TOP - 75, LEFT + 75, TOP - 25),  # quarter pixels at its edges
            # x <= depth below the top: half the nodata pixel, 3,750 m² west of 50 m.
            Polygon([(LEFT, TOP), (LEFT, TOP - 100), (LEFT + 100, TOP - 100)]),
        ],
        crs=CRS,
    )


@pytest.mark.parametrize(("suffix", "crs"), [(".gpkg", "EPSG:4326"), (".shp", CRS)])
def test_partial_pixels_count_by_the_fraction_covered(half_and_half, tmp_path, suffix, crs):
    expected = zones()
    path = tmp_path / f"zones{suffix}"
    expected.drop(columns=["cropland_m2", "woodland_m2"]).to_crs(crs).to_file(path)
    table = zonal_areas(half_and_half, path)
    assert table["name"].tolist() == expected["name"].tolist()
    np.testing.assert_allclose(table["Cropland_ha"], expected["cropland_m2"] / 1e4, atol=1e-7)
    np.testing.assert_allclose(table["Woodland_ha"], expected["woodland_m2"] / 1e4, atol=1e-7)
    np.testing.assert_allclose(table["zone_ha"], [0.45, 0.25, 0.5], atol=1e-7)
    np.testing.assert_allclose(
        table["classified_ha"], table["Cropland_ha"] + table["Woodland_ha"], atol=1e-9
    )


def test_areas_verb_writes_csv_and_geoparquet(half_and_half, tmp_path, capsys):
    zones().to_crs("EPSG:4326").to_file(tmp_path / "zones.geojson")
    for out in (tmp_path / "areas.csv", tmp_path / "areas.parquet"):
        argv = ["areas", str(half_and_half), "--zones", str(tmp_path / "zones.geojson")]
        assert main([*argv, "--out", str(out)]) == 0
        assert str(out) in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "areas.csv")
    assert table.columns.tolist() == [
        "name", "cropland_m2", "woodland_m2", "zone_ha", "classified_ha", "Cropland_ha",
        "Woodland_ha",
    ]  # fmt: skip
    np.testing.assert_allclose(table["Cropland_ha"], table["cropland_m2"] / 1e4, atol=1e-7)
    parquet = gpd.read_parquet(tmp_path / "areas.parquet")
    assert parquet.crs.to_epsg() == 4326 and len(parquet) == 3
    np.testing.assert_allclose(parquet["Woodland_ha"], table["Woodland_ha"])


def test_zones_must_be_polygons_with_a_crs(half_and_half, tmp_path):
    points = gpd.GeoDataFrame({"id": [1]}, geometry=[Point(LEFT + 5, TOP - 5)], crs=CRS)
    points.to_file(tmp_path / "points.gpkg")
    with pytest.raises(TimeSenCLIPError, match="zones must be polygons"):
        zonal_areas(half_and_half, tmp_path / "points.gpkg")
    assert main(["areas", str(half_and_half), "--zones", str(tmp_path / "points.gpkg"),
                 "--out", str(tmp_path / "a.xlsx")]) == 2  # fmt: skip
