"""Monthly median cube: exact composites, grid, harmonisation, masks, bad assets, reprojection."""

import copy
import datetime
import logging
import warnings

import numpy as np
import pystac_client
import pytest
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds

from encoder.preprocess import BANDS
from fixtures.synthetic import write_synthetic_collection
from pipeline.cube.composite import BadAssetError, nanmedian_time
from pipeline.cube.lazy import build_cube
from pipeline.search.sentinel2 import BANDS_20M, DEFAULT_CLOUD_MASK, REFERENCE_ZERO_CLASSES
from timesenclip.common.errors import TimeSenCLIPError

YEAR = 2023
SMALL_DATES = [datetime.date(YEAR, 1, 5), datetime.date(YEAR, 1, 20), datetime.date(YEAR, 3, 5)]


def expected_cube(scenes, offsets, *, mask=DEFAULT_CLOUD_MASK, reference=False):
    """(12, 10, H, W) composite and (H, W) valid-month count computed directly from the scenes."""
    dn = np.stack([scene.dn for scene in scenes]).astype(np.float32)
    scl = np.stack([scene.scl for scene in scenes])
    months = np.array([scene.datetime.month for scene in scenes])
    values = dn - np.asarray(offsets, np.float32)[:, None, None, None]
    if reference:
        # The published rule: clouds and snow become 0 and stay, DN 0 stays, lower median per
        # month, the year's lower median for a month without scenes, then + 1.
        values[np.broadcast_to(np.isin(scl, REFERENCE_ZERO_CLASSES)[:, None], values.shape)] = 0
        year = np.percentile(values, 50, axis=0, method="lower")
        composite = np.stack(
            [
                np.percentile(values[months == m], 50, axis=0, method="lower")
                if (months == m).any()
                else year
                for m in range(1, 13)
            ]
        ).astype(np.float32)
        return composite + 1, np.full(values.shape[2:], len(set(months)))
    dropped = (dn == 0).any(axis=1) | np.isin(scl, mask)
    values[np.broadcast_to(dropped[:, None], values.shape)] = np.nan
    composite = np.full((12, *values.shape[1:]), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels are expected
        for month in set(months):
            composite[month - 1] = np.nanmedian(values[months == month], axis=0)
    return composite, np.isfinite(composite[:, 0]).sum(axis=0)


def assert_cube_equals(cube, composite, valid):
    assert cube["composite"].dtype == np.float32 and cube["valid_months"].dtype == np.uint8
    np.testing.assert_array_equal(cube["composite"].values, composite)
    np.testing.assert_array_equal(cube["valid_months"].values, valid)


@pytest.fixture(scope="module")
def served(synthetic_api):
    """A year of scenes (offset +1000 to remove), searched through a local STAC API."""
    synthetic, url = synthetic_api(shape=(48, 40), cloud_fraction=0.5, boa_offset_applied=None)
    search = pystac_client.Client.open(url).search(
        collections=["sentinel-2-l2a"], datetime=str(YEAR)
    )
    items = list(search.items())
    cube = build_cube(items, epsg=synthetic.epsg, bounds=synthetic.bounds, year=YEAR, chunk_size=32)
    return synthetic, items, cube


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_synthetic_collection(
        tmp_path_factory.mktemp("small"), shape=(16, 16), dates=SMALL_DATES, cloud_fraction=0.4
    )


def small_cube(small, items=None, **kwargs):
    items = small.items if items is None else items
    return build_cube(items, epsg=small.epsg, bounds=small.bounds, year=YEAR, **kwargs)


def test_composite_equals_hand_computed_medians(served):
    synthetic, items, cube = served
    assert len(items) == 24
    composite, valid = expected_cube(synthetic.scenes, [1000] * 24)
    assert_cube_equals(cube.compute(), composite, valid)
    # The data exercise the rule: some months are cloudy everywhere at some pixels.
    assert valid.min() < 12 and np.isnan(composite).any() and np.isfinite(composite).any()


def test_grid_is_the_tile_grid_with_pixel_centres(served):
    synthetic, _, cube = served
    xmin, ymin, xmax, ymax = synthetic.bounds
    assert cube.rio.crs.to_epsg() == 32631
    assert cube.rio.transform() == Affine(10.0, 0.0, xmin, 0.0, -10.0, ymax)
    assert cube.sizes == {"month": 12, "band": 10, "y": 48, "x": 40}
    assert cube["x"].values[0] == xmin + 5.0 and cube["x"].values[-1] == xmax - 5.0
    assert cube["y"].values[0] == ymax - 5.0 and cube["y"].values[-1] == ymin + 5.0
    assert list(cube["month"].values) == list(range(1, 13))
    assert list(cube["band"].values) == list(BANDS)
    # One month per chunk: a task reads one month's scenes of one spatial chunk.
    assert cube["composite"].chunks == ((1,) * 12, (10,), (32, 16), (32, 8))


def test_attrs_record_items_and_harmonisation_and_survive_zarr(served, tmp_path):
    synthetic, _, cube = served
    assert cube.attrs["item_ids"] == [scene.id for scene in synthetic.scenes]
    rules = cube.attrs["harmonization"]
    assert [rule["item_id"] for rule in rules] == cube.attrs["item_ids"]
    assert {rule["offset"] for rule in rules} == {1000}
    assert all("05.09" in rule["rule"] for rule in rules)
    cube.to_zarr(tmp_path / "cube.zarr", consolidated=False)
    stored = xr.open_zarr(tmp_path / "cube.zarr", consolidated=False, decode_coords="all")
    assert stored.attrs["harmonization"] == rules
    assert stored.rio.crs.to_epsg() == 32631 and stored.rio.transform() == cube.rio.transform()
    assert list(stored["band"].values) == list(BANDS)
    assert_cube_equals(stored.compute(), *expected_cube(synthetic.scenes, [1000] * 24))


@pytest.mark.parametrize(
    ("baseline", "applied", "offset"),
    [("05.09", None, 1000), ("05.09", False, 1000), ("05.09", True, 0), ("02.14", None, 0)],
)
def test_harmonisation_brings_every_baseline_to_the_same_scale(
    tmp_path, small, baseline, applied, offset
):
    synthetic = write_synthetic_collection(
        tmp_path,
        shape=(16, 16),
        dates=SMALL_DATES,
        cloud_fraction=0.4,
        processing_baseline=baseline,
        boa_offset_applied=applied,
    )
    stored = np.stack([scene.dn for scene in synthetic.scenes]).astype(int)
    reference = np.stack([scene.dn for scene in small.scenes]).astype(int)
    np.testing.assert_array_equal(stored - reference, offset)  # same scenes, shifted DN
    cube = small_cube(synthetic).compute()
    assert [rule["offset"] for rule in cube.attrs["harmonization"]] == [offset] * 3
    assert_cube_equals(cube, *expected_cube(synthetic.scenes, [offset] * 3))
    np.testing.assert_array_equal(cube["composite"].values, small_cube(small)["composite"].values)


def test_offsets_apply_per_item_within_a_month(tmp_path):
    old = write_synthetic_collection(
        tmp_path / "old", shape=(16, 16), dates=SMALL_DATES, processing_baseline="02.14"
    )
    later = [datetime.date(YEAR, 1, 25), datetime.date(YEAR, 3, 20)]
    new = write_synthetic_collection(
        tmp_path / "new", shape=(16, 16), dates=later, boa_offset_applied=None, seed=1
    )
    cube = build_cube(old.items + new.items, epsg=old.epsg, bounds=old.bounds, year=YEAR).compute()
    scenes = sorted(old.scenes + new.scenes, key=lambda scene: scene.datetime)
    offsets = [0 if scene.processing_baseline == "02.14" else 1000 for scene in scenes]
    assert offsets == [0, 0, 1000, 0, 1000]
    assert_cube_equals(cube, *expected_cube(scenes, offsets))


def test_reference_mode_zeroes_clouds_and_fills_empty_months(tmp_path):
    dates = [*SMALL_DATES, datetime.date(YEAR, 7, 20), datetime.date(YEAR, 7, 25)]
    synthetic = write_synthetic_collection(
        tmp_path, shape=(16, 16), dates=dates, cloud_fraction=0.4
    )
    cube = small_cube(synthetic, mask_mode="reference")
    assert cube["composite"].chunks[0] == (12,)  # the year median needs every scene at once
    cube = cube.compute()
    composite, valid = expected_cube(synthetic.scenes, [0] * 5, reference=True)
    assert_cube_equals(cube, composite, valid)
    assert (valid == 3).all() and not np.isnan(composite).any()
    march_clouds = np.isin(synthetic.scenes[2].scl, REFERENCE_ZERO_CLASSES)
    assert march_clouds.any() and (cube["composite"].values[2][:, march_clouds] == 1).all()


def test_cloud_mask_is_configurable(small):
    cube = small_cube(small, cloud_mask=(9,)).compute()
    assert_cube_equals(cube, *expected_cube(small.scenes, [0] * 3, mask=(9,)))
    assert cube.attrs["cloud_mask"] == [9]


def test_missing_asset_raises_naming_item_and_asset(small):
    items = copy.deepcopy(small.items)
    del items[1]["assets"]["rededge2"]
    with pytest.raises(BadAssetError, match=small.scenes[1].id) as error:
        small_cube(small, items)
    assert "rededge2" in str(error.value) and "on_bad_asset='skip'" in str(error.value)


def test_missing_asset_is_skipped_with_a_warning(small, caplog):
    items = copy.deepcopy(small.items)
    del items[1]["assets"]["scl"]
    with caplog.at_level(logging.WARNING, logger="pipeline.cube.composite"):
        cube = small_cube(small, items, on_bad_asset="skip").compute()
    assert small.scenes[1].id in caplog.text
    assert cube.attrs["skipped_item_ids"] == [small.scenes[1].id]
    kept = [small.scenes[0], small.scenes[2]]
    assert_cube_equals(cube, *expected_cube(kept, [0, 0]))


@pytest.fixture(params=["corrupt", "absent"])
def unreadable(request, small, tmp_path):
    """Items whose second scene's SCL href points at a corrupt or absent file."""
    href = tmp_path / "broken_scl.tif"
    if request.param == "corrupt":
        href.write_bytes(b"this is not a GeoTIFF")
    items = copy.deepcopy(small.items)
    items[1]["assets"]["scl"]["href"] = str(href)
    return items, str(href)


def test_unreadable_asset_raises_naming_item_asset_and_href(small, unreadable):
    items, href = unreadable
    cube = small_cube(small, items)
    with pytest.raises(BadAssetError) as error:
        cube.compute()
    message = str(error.value)
    assert small.scenes[1].id in message and "'scl'" in message and href in message


def test_unreadable_asset_is_skipped_with_a_warning(small, unreadable, caplog):
    items, href = unreadable
    with caplog.at_level(logging.WARNING, logger="pipeline.cube.composite"):
        cube = small_cube(small, items, on_bad_asset="skip").compute()
    assert small.scenes[1].id in caplog.text and href in caplog.text
    kept = [small.scenes[0], small.scenes[2]]
    assert_cube_equals(cube, *expected_cube(kept, [0, 0]))


def test_a_month_whose_only_scene_is_unreadable_stays_empty(small, tmp_path):
    """Lazy cube and chunk task alike: March's one scene left out leaves March NaN, not an error."""
    from pipeline.cube.composite import CubeOptions, composite_chunk
    from pipeline.geo.grid import Grid
    from pipeline.search.items import usable_refs

    items = copy.deepcopy(small.items)
    items[2]["assets"]["scl"]["href"] = str(tmp_path / "absent_scl.tif")
    cube = small_cube(small, items, on_bad_asset="skip").compute()
    assert_cube_equals(cube, *expected_cube(small.scenes[:2], [0, 0]))
    assert np.isnan(cube["composite"].sel(month=3).values).all()
    refs, _ = usable_refs(items, YEAR, "skip")
    grid = Grid(small.epsg, small.bounds, 10.0)
    chunk = composite_chunk(refs, grid, CubeOptions(on_bad_asset="skip"))
    np.testing.assert_array_equal(chunk.composite, cube["composite"].values)
    np.testing.assert_array_equal(chunk.valid_months, cube["valid_months"].values)
    assert [s["id"] for s in chunk.skipped] == [small.scenes[2].id]


def test_bilinear_resampling_touches_only_the_20m_bands(small):
    nearest = small_cube(small).compute()["composite"].values
    bilinear = small_cube(small, resampling="bilinear").compute()["composite"].values
    is_20m = np.isin(BANDS, BANDS_20M)
    np.testing.assert_array_equal(bilinear[:, ~is_20m], nearest[:, ~is_20m])
    np.testing.assert_array_equal(np.isnan(bilinear), np.isnan(nearest))  # SCL stays nearest
    assert not np.array_equal(bilinear[:, is_20m], nearest[:, is_20m], equal_nan=True)


def test_neighbouring_zone_items_are_warped_onto_the_tile_grid(tmp_path):
    source = write_synthetic_collection(
        tmp_path, epsg=32632, origin=(300000.0, 4800000.0), shape=(32, 32), dates=SMALL_DATES
    )
    west, south, east, north = transform_bounds("EPSG:32632", "EPSG:32631", *source.bounds)
    bounds = (west // 10 * 10, south // 10 * 10, -(-east // 10) * 10, -(-north // 10) * 10)
    cube = build_cube(source.items, epsg=32631, bounds=bounds, year=YEAR).compute()
    assert cube.rio.crs.to_epsg() == 32631
    assert cube.rio.transform() == Affine(10.0, 0.0, bounds[0], 0.0, -10.0, bounds[3])

    # Where does each 32631 pixel centre fall in the 32632 scene grid?
    xs, ys = np.meshgrid(cube["x"].values, cube["y"].values)
    sx, sy = Transformer.from_crs(32631, 32632, always_xy=True).transform(xs, ys)
    col, row = (sx - source.bounds[0]) / 10.0, (source.bounds[3] - sy) / 10.0
    inside = (col >= 0) & (col < 32) & (row >= 0) & (row < 32)
    # Leave out centres within 0.05 px of a source pixel edge (GDAL approximates the transform).
    clear_cut = (np.abs(col - np.round(col)) > 0.05) & (np.abs(row - np.round(row)) > 0.05)
    outside = (col < -0.05) | (col > 32.05) | (row < -0.05) | (row > 32.05)
    compared = inside & clear_cut
    assert compared.sum() > 0.8 * 32 * 32 and outside.sum() > 50  # rotated footprint

    composite, valid = expected_cube(source.scenes, [0] * 3)
    r, c = row[compared].astype(int), col[compared].astype(int)
    got = cube["composite"].values
    np.testing.assert_array_equal(got[:, :, compared], composite[:, :, r, c])
    np.testing.assert_array_equal(cube["valid_months"].values[compared], valid[r, c])
    assert np.isnan(got[:, :, outside]).all() and (cube["valid_months"].values[outside] == 0).all()


def test_items_outside_the_year_or_the_bounds(small, caplog):
    with pytest.raises(TimeSenCLIPError, match="no usable Sentinel-2 item for 2024"):
        build_cube(small.items, epsg=small.epsg, bounds=small.bounds, year=2024)
    far = (600000.0, 4700000.0, 600160.0, 4700160.0)
    with caplog.at_level(logging.WARNING, logger="pipeline.cube.lazy"):
        cube = build_cube(small.items, epsg=small.epsg, bounds=far, year=YEAR).compute()
    assert "overlaps" in caplog.text
    assert np.isnan(cube["composite"].values).all() and (cube["valid_months"].values == 0).all()
    assert cube.sizes == {"month": 12, "band": 10, "y": 16, "x": 16}
    assert cube.attrs["item_ids"] == [] and len(cube.attrs["unused_item_ids"]) == 3


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("mask_mode", "strict"),
        ("on_bad_asset", "ignore"),
        ("resampling", "sharpest"),
        ("cloud_mask", (9, 12)),
        ("chunk_size", 0),
        ("resolution", -10.0),
        ("bounds", (1.0, 0.0, 0.0, 1.0)),
    ],
)
def test_bad_arguments_are_named(small, argument, value):
    kwargs = {"epsg": small.epsg, "bounds": small.bounds, "year": YEAR, argument: value}
    with pytest.raises(TimeSenCLIPError, match=argument):
        build_cube(small.items, **kwargs)


def test_nanmedian_time_equals_numpy():
    rng = np.random.default_rng(0)
    for steps in range(1, 7):
        values = rng.integers(1, 10000, size=(steps, 8, 9)).astype(np.float32)
        values[rng.random(values.shape) < 0.4] = np.nan
        values[:, 0, 0] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(values, axis=0)
        np.testing.assert_array_equal(nanmedian_time(values), expected)


@pytest.mark.parametrize("temporal", ["seasonal", "annual"])
def test_seasonal_and_annual_tokens_are_medians_of_their_observations(small, temporal):
    from pipeline.cube.composite import CubeOptions, composite_chunk
    from pipeline.geo.grid import Grid
    from pipeline.search.items import usable_refs

    refs, _ = usable_refs(small.items, YEAR, "raise")
    grid = Grid(small.epsg, small.bounds, 10.0)
    cube = composite_chunk(refs, grid, CubeOptions(temporal=temporal))
    scenes = small.scenes
    dn = np.stack([s.dn for s in scenes]).astype(np.float32)
    dropped = (dn == 0).any(axis=1) | np.isin(np.stack([s.scl for s in scenes]), DEFAULT_CLOUD_MASK)
    dn[np.broadcast_to(dropped[:, None], dn.shape)] = np.nan
    months = np.array([s.datetime.month for s in scenes])
    blocks = (
        [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)]
        if temporal == "seasonal"
        else [tuple(range(1, 13))]
    )
    expected = np.full((len(blocks), *dn.shape[1:]), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, block in enumerate(blocks):
            chosen = np.isin(months, block)
            if chosen.any():
                expected[i] = np.nanmedian(dn[chosen], axis=0)
    np.testing.assert_array_equal(cube.composite, expected)
    _, valid = expected_cube(scenes, [0] * len(scenes))
    np.testing.assert_array_equal(cube.valid_months, valid)
