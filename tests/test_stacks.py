"""Composites of a user's stackstac or odc-stac stack equal the reader's, bit for bit, on the same
items and grid: harmonised per scene from the stack's item coordinates, reduced by the chunk
path's own function; and a stack that cannot give them is refused, naming what to pass."""

from __future__ import annotations

import copy
import datetime

import numpy as np
import pystac
import pytest
import stackstac
import xarray as xr

from fixtures.synthetic import write_synthetic_collection
from pipeline.cube.composite import CubeOptions, composite_chunk
from pipeline.cube.lazy import build_cube
from pipeline.cube.stacks import stack_cube
from pipeline.geo.grid import Grid
from pipeline.search.items import usable_refs
from pipeline.search.stac import EARTH_SEARCH_ASSETS, PLANETARY_COMPUTER_ASSETS
from timesenclip.common.errors import TimeSenCLIPError

# odc-stac's reads of a window warn that a temporary dataset has no georeferencing, and odc-geo
# calls a deprecated shapely function.
pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:odc.geo.*"),
]
YEAR = 2023
ASSET_KEYS = list(EARTH_SEARCH_ASSETS.values())
ODC_PROPERTIES = ["s2:processing_baseline", "earthsearch:boa_offset_applied"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three baselines in one stack: 02.14 (offset 0), 05.09 with the offset in the DN (1000)
    and 05.09 with Earth Search's offset already removed (0), mixed within months."""
    root = tmp_path_factory.mktemp("stacks")

    def dates(*days):
        return [datetime.date(YEAR, month, day) for month, day in days]

    old = write_synthetic_collection(
        root / "old", shape=(40, 48), dates=dates((1, 5), (3, 5), (7, 9)), cloud_fraction=0.4,
        processing_baseline="02.14",
    )  # fmt: skip
    new = write_synthetic_collection(
        root / "new", shape=(40, 48), dates=dates((1, 20), (3, 25), (8, 2)), cloud_fraction=0.4,
        boa_offset_applied=None, seed=1,
    )  # fmt: skip
    applied = write_synthetic_collection(
        root / "applied", shape=(40, 48), dates=dates((1, 28), (7, 30)), cloud_fraction=0.4,
        boa_offset_applied=True, seed=2,
    )  # fmt: skip
    items = old.items + new.items + applied.items
    reader = build_cube(items, epsg=old.epsg, bounds=old.bounds, year=YEAR, chunk_size=16)
    return old, items, reader.compute()


def stacked(items, grid, **options):
    return stackstac.stack(
        items,
        epsg=grid.epsg,
        bounds=grid.bounds,
        resolution=10,
        xy_coords="center",
        chunksize=24,
        **({"rescale": False} | options),
    )


def odc_loaded(items, grid, keys=ASSET_KEYS, **options):
    import odc.stac

    return odc.stac.load(
        [pystac.Item.from_dict(item) for item in items],
        bands=keys,
        crs=f"EPSG:{grid.epsg}",
        resolution=10,
        x=(grid.bounds[0], grid.bounds[2]),
        y=(grid.bounds[1], grid.bounds[3]),
        chunks={},
        groupby="id",
        **({"with_properties": ODC_PROPERTIES} | options),
    )


def as_planetary_computer(items):
    """The same items with Planetary Computer's asset names (B02 ... SCL)."""
    renamed = copy.deepcopy(items)
    for item in renamed:
        item["assets"] = {
            PLANETARY_COMPUTER_ASSETS[band]: item["assets"][key]
            for band, key in EARTH_SEARCH_ASSETS.items()
        }
    return renamed


def assert_same_cube(got: xr.Dataset, expected: xr.Dataset) -> None:
    assert got["composite"].dtype == np.float32 and got["valid_months"].dtype == np.uint8
    np.testing.assert_array_equal(got["composite"].values, expected["composite"].values)
    np.testing.assert_array_equal(got["valid_months"].values, expected["valid_months"].values)
    np.testing.assert_array_equal(got["x"].values, expected["x"].values)
    np.testing.assert_array_equal(got["y"].values, expected["y"].values)
    assert got.rio.crs == expected.rio.crs and got.rio.transform() == expected.rio.transform()


@pytest.mark.parametrize("layout", ["earth-search", "planetary-computer"])
def test_stackstac_composites_equal_the_readers(scenes, layout):
    synthetic, items, reader = scenes
    if layout == "planetary-computer":
        items = as_planetary_computer(items)
    grid = Grid(synthetic.epsg, synthetic.bounds, 10.0)
    cube = stack_cube(stacked(items, grid))
    assert cube["composite"].chunks[2:] == ((24, 16), (24, 24))  # the stack's chunks
    cube = cube.compute()
    assert_same_cube(cube, reader)
    # Every scene counted where it was clear, and the data are not trivially empty.
    assert np.isfinite(reader["composite"].values).mean() > 0.1
    assert cube.attrs["harmonization"] == reader.attrs["harmonization"]
    offsets = [rule["offset"] for rule in cube.attrs["harmonization"]]
    assert sorted(set(offsets)) == [0, 1000] and offsets.count(1000) == 3


def test_the_chunk_path_gives_the_same_composites(scenes):
    synthetic, items, reader = scenes
    refs, _ = usable_refs(items, YEAR, "raise")
    chunk = composite_chunk(refs, Grid(synthetic.epsg, synthetic.bounds, 10.0), CubeOptions())
    np.testing.assert_array_equal(chunk.composite, reader["composite"].values)
    np.testing.assert_array_equal(chunk.valid_months, reader["valid_months"].values)


def test_odc_stac_composites_equal_the_readers(scenes):
    synthetic, items, reader = scenes
    grid = Grid(synthetic.epsg, synthetic.bounds, 10.0)
    cube = stack_cube(odc_loaded(items, grid)).compute()
    assert_same_cube(cube, reader)
    got = [(r["offset"], r["rule"]) for r in cube.attrs["harmonization"]]
    assert got == [(r["offset"], r["rule"]) for r in reader.attrs["harmonization"]]


def test_reference_mode_on_a_stack_equals_the_readers(scenes):
    synthetic, items, _ = scenes
    grid = Grid(synthetic.epsg, synthetic.bounds, 10.0)
    cube = stack_cube(stacked(items, grid), mask_mode="reference")
    assert cube["composite"].chunks[0] == (12,)  # the year median needs every scene at once
    reader = build_cube(items, epsg=grid.epsg, bounds=grid.bounds, year=YEAR, mask_mode="reference")
    assert_same_cube(cube.compute(), reader.compute())


def test_only_the_years_scenes_count(scenes, tmp_path):
    synthetic, items, reader = scenes
    earlier = write_synthetic_collection(
        tmp_path, shape=(40, 48), dates=[datetime.date(YEAR - 1, 6, 1)], cloud_fraction=0.0
    )
    stack = stacked(items + earlier.items, Grid(synthetic.epsg, synthetic.bounds, 10.0))
    with pytest.raises(TimeSenCLIPError, match=f"several years.*{YEAR - 1}, {YEAR}.*pass year="):
        stack_cube(stack)
    cube = stack_cube(stack, year=YEAR)
    assert cube.attrs["unused_item_ids"] == [earlier.items[0]["id"]]
    assert_same_cube(cube.compute(), reader)


def test_stacks_that_cannot_give_composites_are_refused(scenes):
    synthetic, items, _ = scenes
    grid = Grid(synthetic.epsg, synthetic.bounds, 10.0)
    stack = stacked(items, grid)
    refusals = [
        (stack.sel(band=ASSET_KEYS[:-1]), r"lacks 'scl' \(SCL, the cloud mask\).*assets="),
        (stack.drop_sel(band="rededge2"), r"lacks 'rededge2' \(B06\).*'rededge2'"),
        (odc_loaded(items, grid, ASSET_KEYS[:-1]), r"lacks 'scl'.*load with bands="),
        (stack, r"no scene of 2021 \(its years: 2023\).*pass year="),
        (stacked(items, grid, properties=False), "stack with properties=True"),
        (odc_loaded(items, grid, with_properties=None), "load with with_properties="),
        (stack.isel(x=0), r"dimensions \(time, band, y, x\)"),
        (stack.values, "expected a stackstac DataArray"),
    ]
    for bad, message in refusals:
        with pytest.raises(TimeSenCLIPError, match=message):
            stack_cube(bad, year=2021 if bad is stack else None)
    with pytest.raises(TimeSenCLIPError, match="mask_mode 'strict' must be one of"):
        stack_cube(stack, mask_mode="strict")


def test_rescaled_reflectances_are_refused_when_read(scenes):
    synthetic, items, _ = scenes
    cube = stack_cube(stacked(items, Grid(synthetic.epsg, synthetic.bounds, 10.0), rescale=True))
    with pytest.raises(TimeSenCLIPError, match=r"not Sentinel-2 digital numbers.*rescale=False"):
        cube.compute()
