"""LUCAS tables as reference data: both table layouts, codes to the built-in classes by the
published model's lists, the quality filters, and an assessment with LUCAS's own strata."""

import json

import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer

from encoder.classes import class_set
from fixtures.classmaps import CRS, ORIGIN, write_class_map
from pipeline.assess.lucas import LucasFilter, read_lucas
from pipeline.cli import main
from timesenclip.common.errors import TimeSenCLIPError

LAND_COVER = [c.name for c in class_set("land_cover")]

# Harmonised 2006-2018 rows: LC1/LU1 codes, LC1 share in either coding, observation types.
HARMONISED = pd.DataFrame(
    {
        "point_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "year": [2018, 2015, 2015, 2012, 2018, 2009, 2015, 2018],
        "lc1": ["B11", "C10", "G10", "A11", "E20", "D10", "X99", "B55"],
        "lu1": ["U111", "U120", "U120", "U400", "U111", "U120", "", "U111"],
        "lc1_perc": ["80", "> 75 %", "50 - 75 %", "25 - 50 %", "", "< 10 %", "> 75 %", "55"],
        "obs_type": [
            "In situ < 100 m",
            "In situ > 100 m",
            "In situ PI",
            "In office PI",
            "In situ < 100 m",
            "In situ < 100 m",
            "In situ < 100 m",
            "In situ < 100 m",
        ],
        "th_lat": [43.31, 43.32, 43.33, 43.34, 43.35, 43.36, 43.37, 43.38],
        "th_long": [3.01, 3.02, 3.03, 3.04, 3.05, 3.06, 3.07, 3.08],
        "gps_lat": [43.3101, 88.888888, 43.3301, 43.3401, 43.3501, 43.3601, 43.3701, 43.3801],
        "gps_long": [3.0101, 88.888888, 3.0301, 3.0401, 3.0501, 3.0601, 3.0701, 3.0801],
    }
)


def test_codes_become_the_published_models_classes(tmp_path):
    HARMONISED.to_csv(tmp_path / "lucas.csv", index=False)
    cover = read_lucas(tmp_path / "lucas.csv", "land_cover")
    assert cover["label"].tolist() == [
        "Cropland", "Woodland", "Water", "Artificial Land", "Grassland", "Shrubland", "",
        "Cropland",
    ]  # fmt: skip
    use = read_lucas(tmp_path / "lucas.csv", "land_use")
    assert use["label"].tolist()[:3] == ["Agriculture", "Forestry", "Forestry"]
    assert use["label"][6] == ""
    assert cover.crs.to_epsg() == 4326
    assert (cover.geometry.y.round(2) == HARMONISED["th_lat"]).all()


def test_quality_filters_and_gps_positions(tmp_path):
    HARMONISED.to_csv(tmp_path / "lucas.csv", index=False)
    kept = read_lucas(tmp_path / "lucas.csv", "land_cover", LucasFilter(min_lc1_perc=50))
    # 80, > 75 %, 50 - 75 %, > 75 % and 55 cover half or more; 25 - 50 %, empty and < 10 % not.
    assert (kept["excluded"] == "").tolist() == [True, True, True, False, False, False, True, True]
    assert kept["excluded"][3] == "lc1_perc below 50 %"
    field = read_lucas(tmp_path / "lucas.csv", "land_cover", LucasFilter(in_situ=True))
    assert field["excluded"].tolist()[:4] == [
        "",
        "",
        "not observed in situ",
        "not observed in situ",
    ]
    gps = read_lucas(tmp_path / "lucas.csv", "land_cover", coordinates="gps")
    assert gps["excluded"][1] == "no gps position"
    assert gps.geometry.x[0] == pytest.approx(3.0101)


def test_the_2022_table(tmp_path):
    table = pd.DataFrame(
        {
            "POINT_ID": [10, 11, 12],
            "POINT_LAT": [43.31, 43.32, 43.33],
            "POINT_LONG": [3.01, 3.02, 3.03],
            "SURVEY_LC1": ["C21", "H11", "F10"],
            "SURVEY_LU1": ["U120", "U111", "U111"],
            "SURVEY_LC1_PERC": ["100", "40", "90"],
            "SURVEY_OBS_TYPE": ["1", "7", "2"],
        }
    )
    table.to_csv(tmp_path / "lucas2022.csv", index=False)
    quality = LucasFilter(min_lc1_perc=50, in_situ=True)
    points = read_lucas(tmp_path / "lucas2022.csv", "land_cover", quality)
    assert points["label"].tolist() == ["Woodland", "Wetlands", "Bare Land"]
    assert points["excluded"].tolist() == ["", "not observed in situ", ""]
    with pytest.raises(TimeSenCLIPError, match="no gps_lat, gps_long column"):
        read_lucas(tmp_path / "lucas2022.csv", "land_cover", coordinates="gps")


def test_assess_with_lucas_and_its_strata(tmp_path):
    """LUCAS points in two strata of its own (not the map's classes), read straight from the
    table; points outside the map, failing the filters or with an unknown code are counted."""
    rng = np.random.default_rng(3)
    classes = np.full((100, 100), 3, np.uint8)  # Woodland
    classes[:, :50] = 2  # Cropland
    map_path = write_class_map(tmp_path / "land_cover.tif", classes, LAND_COVER)
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x = ORIGIN[0] + rng.uniform(0, 1000, 60)
    y = ORIGIN[1] - rng.uniform(0, 1000, 60)
    lon, lat = to_wgs84.transform(x, y)
    truth = np.where(x < ORIGIN[0] + 500, "B11", "C10")
    truth[:6] = "E20"  # grassland the map calls cropland or woodland
    table = pd.DataFrame(
        {
            "POINT_ID": range(60),
            "POINT_LAT": lat,
            "POINT_LONG": lon,
            "SURVEY_LC1": truth,
            "SURVEY_OBS_TYPE": ["1"] * 55 + ["7"] * 5,
            "STRATUM_LUCAS": np.where(np.arange(60) % 3 == 0, "S1", "S2"),
        }
    )
    table.loc[55, "POINT_LONG"] = 10.0  # off the map (and not in situ: first reason counts)
    table.loc[10, "POINT_LAT"] = 60.0
    table.loc[11, "SURVEY_LC1"] = "8"
    table.to_csv(tmp_path / "lucas.csv", index=False)
    (tmp_path / "strata.csv").write_text("stratum,size\nS1,400000\nS2,800000\n")
    out = tmp_path / "out"
    argv = ["assess", str(map_path), "--reference", str(tmp_path / "lucas.csv"), "--out", str(out)]
    argv += ["--lucas", "land_cover", "--lucas-in-situ", "--strata", "STRATUM_LUCAS"]
    assert main([*argv, "--strata-sizes", str(tmp_path / "strata.csv")]) == 0
    document = json.loads((out / "assessment.json").read_text())
    assert document["method"].startswith("Stehman")
    assert document["points"]["excluded"] == {
        "not observed in situ": 5,
        "outside the map": 1,
        "its code has no land_cover class": 1,
    }
    assert document["points"]["used"] == 53
    assert document["classes"] == ["Cropland", "Woodland", "Grassland"]
    grassland = document["per_class"][2]
    assert grassland["mapped_pixels"] == 0 and grassland["users_accuracy"]["estimate"] is None
    assert grassland["area_proportion"]["estimate"] > 0
