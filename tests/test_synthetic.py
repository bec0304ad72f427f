"""Synthetic Sentinel-2 scenes: files, georeferencing, stored values, offsets, STAC validity."""

import datetime

import numpy as np
import pystac
import pytest
import rasterio

from encoder.preprocess import BANDS
from fixtures.synthetic import (
    LAND_CLASSES,
    default_dates,
    write_synthetic_collection,
)
from pipeline.search.sentinel2 import BANDS_20M
from pipeline.search.stac import EARTH_SEARCH_ASSETS
from timesenclip.common.errors import TimeSenCLIPError

DATES = [datetime.date(2023, 1, 5), datetime.date(2023, 4, 20), datetime.date(2023, 7, 5)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_collection(tmp_path_factory.mktemp("syn"), dates=DATES, shape=(32, 48))


def test_default_dates_are_two_per_month_in_2023():
    dates = default_dates()
    assert len(dates) == 24
    assert {d.year for d in dates} == {2023}
    assert sorted({d.month for d in dates}) == list(range(1, 13))


def test_items_collection_and_grid(synthetic):
    assert [item["id"] for item in synthetic.items] == [scene.id for scene in synthetic.scenes]
    assert synthetic.epsg == 32631 and synthetic.resolution == 10.0
    assert synthetic.bounds == (500000.0, 4800000.0 - 320.0, 500000.0 + 480.0, 4800000.0)
    assert synthetic.collection["id"] == "sentinel-2-l2a"
    assert pystac.Collection.from_dict(synthetic.collection).id == "sentinel-2-l2a"
    for item, scene in zip(synthetic.items, synthetic.scenes, strict=True):
        parsed = pystac.Item.from_dict(item)
        assert parsed.collection_id == "sentinel-2-l2a"
        assert parsed.datetime == scene.datetime
        assert scene.datetime.tzinfo is not None
        assert set(parsed.assets) == set(EARTH_SEARCH_ASSETS.values())
        assert item["properties"]["proj:epsg"] == 32631
        lon_min, lat_min, lon_max, lat_max = item["bbox"]
        assert 2.9 < lon_min < lon_max < 3.1 and 43.3 < lat_min < lat_max < 43.4


def test_assets_are_georeferenced_cogs_matching_the_item(synthetic):
    for item in synthetic.items:
        for key, asset in item["assets"].items():
            with rasterio.open(asset["href"]) as src:
                assert src.crs.to_epsg() == item["properties"]["proj:epsg"]
                assert list(src.transform)[:6] == asset["proj:transform"]
                assert list(src.shape) == asset["proj:shape"]
                assert list(src.bounds) == asset["proj:bbox"] == list(synthetic.bounds)
                assert src.nodata == 0
                assert src.dtypes[0] == ("uint8" if key == "scl" else "uint16")
                assert src.profile["tiled"] and src.overviews(1)
                expected_res = 20.0 if key in ("scl", "nir08", "rededge1", "swir16") else None
                if expected_res:
                    assert src.res == (expected_res, expected_res)


def test_stored_values_equal_scene_arrays(synthetic):
    for item, scene in zip(synthetic.items, synthetic.scenes, strict=True):
        assert scene.dn.shape == (10, 32, 48) and scene.dn.dtype == np.uint16
        assert scene.scl.shape == (32, 48) and scene.scl.dtype == np.uint8
        for index, band in enumerate(BANDS):
            with rasterio.open(item["assets"][EARTH_SEARCH_ASSETS[band]]["href"]) as src:
                stored = src.read(1)
            step = 2 if band in BANDS_20M else 1
            np.testing.assert_array_equal(stored, scene.dn[index, ::step, ::step])
            # 20 m values repeat over 2x2 10 m pixels, as a nearest upsampling would give.
            np.testing.assert_array_equal(
                np.repeat(np.repeat(stored, step, 0), step, 1), scene.dn[index]
            )
        with rasterio.open(item["assets"]["scl"]["href"]) as src:
            np.testing.assert_array_equal(src.read(1), scene.scl[::2, ::2])
        assert scene.dn.min() >= 1  # 0 is nodata


def test_scl_classes_and_cloud_cover(synthetic):
    for item, scene in zip(synthetic.items, synthetic.scenes, strict=True):
        assert set(np.unique(scene.scl)) <= {3, 4, 5, 9, 10}
        cloudy = np.isin(scene.scl, (9, 10)).mean() * 100
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(cloudy, abs=1e-3)
    all_scl = np.stack([scene.scl for scene in synthetic.scenes])
    assert {3, 4, 5, 9, 10} <= set(np.unique(all_scl))
    # Clouds are bright and shadows dark in the stored values.
    scene = synthetic.scenes[0]
    nir = scene.dn[BANDS.index("B08")].astype(float)
    assert nir[scene.scl == 9].min() > nir[np.isin(scene.scl, (4, 5))].max()


def test_land_classes_have_distinct_seasonal_spectra(synthetic):
    land = synthetic.land_cover
    assert land.shape == (32, 48) and set(np.unique(land)) == set(range(len(LAND_CLASSES)))
    nir = BANDS.index("B08")

    def clear_median(scene, cls):
        clear = np.isin(scene.scl, (4, 5)) & (land == cls)
        return np.median(scene.dn[nir][clear])

    january, july = synthetic.scenes[0], synthetic.scenes[2]
    forest, crop, water = (LAND_CLASSES.index(c) for c in ("forest", "cropland", "water"))
    assert clear_median(july, forest) > 2500 > 500 > clear_median(july, water)
    assert clear_median(july, crop) - clear_median(january, crop) > 1000  # crops green up


def test_deterministic_from_seed(tmp_path):
    first = write_synthetic_collection(tmp_path / "a", dates=DATES[:1], shape=(16, 16), seed=3)
    again = write_synthetic_collection(tmp_path / "b", dates=DATES[:1], shape=(16, 16), seed=3)
    other = write_synthetic_collection(tmp_path / "c", dates=DATES[:1], shape=(16, 16), seed=4)
    np.testing.assert_array_equal(first.scenes[0].dn, again.scenes[0].dn)
    np.testing.assert_array_equal(first.scenes[0].scl, again.scenes[0].scl)
    assert not np.array_equal(first.scenes[0].dn, other.scenes[0].dn)


@pytest.mark.parametrize(
    ("baseline", "applied", "offset"),
    [("05.09", True, 0), ("05.09", None, 1000), ("04.00", False, 1000), ("02.14", None, 0)],
)
def test_stored_offset_follows_item_metadata(tmp_path, baseline, applied, offset):
    common = {"dates": DATES[:1], "shape": (16, 16), "seed": 1}
    reference = write_synthetic_collection(tmp_path / "ref", processing_baseline="02.14", **common)
    synthetic = write_synthetic_collection(
        tmp_path / "s", processing_baseline=baseline, boa_offset_applied=applied, **common
    )
    props = synthetic.items[0]["properties"]
    assert props["s2:processing_baseline"] == baseline
    assert props.get("earthsearch:boa_offset_applied") == applied
    assert ("earthsearch:boa_offset_applied" in props) == (applied is not None)
    scene = synthetic.scenes[0]
    assert (scene.processing_baseline, scene.boa_offset_applied) == (baseline, applied)
    difference = scene.dn.astype(int) - reference.scenes[0].dn.astype(int)
    assert np.all(difference == offset)


def test_all_10m_and_cloud_extremes(tmp_path):
    synthetic = write_synthetic_collection(
        tmp_path / "clear", dates=DATES[:1], shape=(15, 15), native_20m=False, cloud_fraction=0.0
    )
    item, scene = synthetic.items[0], synthetic.scenes[0]
    assert all(asset["proj:shape"] == [15, 15] for asset in item["assets"].values())
    assert set(np.unique(scene.scl)) <= {4, 5} and item["properties"]["eo:cloud_cover"] == 0
    overcast = write_synthetic_collection(tmp_path / "cloud", dates=DATES[:1], cloud_fraction=1.0)
    assert set(np.unique(overcast.scenes[0].scl)) <= {9, 10}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (15, 16)},
        {"shape": (1, 1), "native_20m": False},
        {"dates": []},
        {"dates": [datetime.date(2023, 1, 1)] * 2},
        {"cloud_fraction": 1.5},
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, kwargs):
    with pytest.raises(TimeSenCLIPError):
        write_synthetic_collection(tmp_path, **kwargs)
