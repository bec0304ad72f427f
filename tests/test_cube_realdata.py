"""The cube on real Sentinel-2 pixels: the eo-learn test patch served as a STAC API.

Five real dates of the eo-learn ``TestEOPatch`` (L1C reflectance, EPSG:32633, Slovenia) are written
as per-band COGs on the patch's own grid, with an SCL made from its s2cloudless mask (9 = cloud,
4 = clear), described by Earth-Search-style items and searched through ``serve_stac``.

The patch grid is not exactly 10 m (999.48 m x 1009.74 m for 100 x 101 px), so the COGs keep the
patch's own transform and the cube is built at 10 m on the patch bbox snapped outward to the 10 m
grid; each cube pixel must then hold the value of the patch pixel that contains its centre
(nearest resampling). The 2015-09-09 scene is written with +1000 and baseline 05.09 to run the
harmonisation on real pixels. A ``stackstac.stack`` of the searched items on the same grid gives
the same composites through the Python face, bit for bit.
"""

import json

import numpy as np
import pytest
import stackstac
from affine import Affine
from rasterio.warp import transform_bounds, transform_geom

from encoder.preprocess import BANDS
from fixtures.stac_server import serve_stac
from pipeline.cube.lazy import build_cube
from pipeline.maps.cog import write_cog
from pipeline.search.stac import EARTH_SEARCH_ASSETS, StacSource, search_items
from timesenclip import monthly_composites

EPSG = 32633
L1C_ORDER = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
OFFSET_DATE = "2015-09-09"


def _patch(realdata):
    folder = realdata / "timeseries" / "eolearn_TestEOPatch"
    meta = json.loads((folder / "DERIVED_METADATA.json").read_text())
    ring = json.loads((folder / "TestEOPatch" / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    reflectance = np.load(folder / "REFERENCE_SCENES.npy")  # (scene, y, x, band)
    clm = np.load(folder / "TestEOPatch" / "mask" / "CLM.npy")[..., 0]  # (timestamp, y, x)
    height, width = reflectance.shape[1:3]
    transform = Affine(
        (max(xs) - min(xs)) / width, 0.0, min(xs), 0.0, -(max(ys) - min(ys)) / height, max(ys)
    )
    scenes = []
    for entry in meta["REFERENCE_SCENES"]["scene_dates"]:
        dn = np.round(reflectance[entry["reference_scene_index"]] * 10000).astype(np.uint16)
        dn = np.moveaxis(dn[..., [L1C_ORDER.index(band) for band in BANDS]], -1, 0)
        cloud = clm[entry["timestamp_index"]] == 1
        scenes.append((entry["timestamp"], dn, np.where(cloud, 9, 4).astype(np.uint8)))
    return sorted(scenes), transform, (min(xs), min(ys), max(xs), max(ys))


def _item_id(date):
    return f"S2A_EOLEARN_{date.replace('-', '')}_0_L2A"


def _item(root, timestamp, dn, scl, transform, bounds):
    date = timestamp[:10]
    item_id = _item_id(date)
    props = {
        "datetime": timestamp + "Z",
        "proj:epsg": EPSG,
        "eo:cloud_cover": round(float((scl == 9).mean()) * 100, 2),
        "s2:processing_baseline": "02.01",
        "earthsearch:boa_offset_applied": False,
    }
    if date == OFFSET_DATE:
        dn = dn + np.uint16(1000)
        props["s2:processing_baseline"] = "05.09"
        del props["earthsearch:boa_offset_applied"]
    folder = root / item_id
    folder.mkdir()
    assets = {}
    for name, data in zip((*BANDS, "SCL"), (*dn, scl), strict=True):
        write_cog(folder / f"{name}.tif", data, transform=transform, crs=EPSG, nodata=0)
        assets[EARTH_SEARCH_ASSETS[name]] = {
            "href": str(folder / f"{name}.tif"),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "proj:shape": list(data.shape),
            "proj:transform": list(transform)[:6],
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": transform_geom(f"EPSG:{EPSG}", "EPSG:4326", _box(bounds)),
        "bbox": list(transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *bounds)),
        "properties": props,
        "assets": assets,
        "links": [],
    }


def _box(bounds):
    xmin, ymin, xmax, ymax = bounds
    ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.fixture(scope="module")
def patch_cube(realdata, tmp_path_factory):
    scenes, transform, bounds = _patch(realdata)
    root = tmp_path_factory.mktemp("eolearn")
    items = [_item(root, *scene, transform, bounds) for scene in scenes]
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "sentinel-2-l2a",
        "description": "eo-learn TestEOPatch scenes as Earth-Search-style items",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [items[0]["bbox"]]},
            "temporal": {"interval": [[items[0]["properties"]["datetime"], None]]},
        },
        "links": [],
    }
    with serve_stac(collection, items, root / "api") as url:
        found = search_items(StacSource(url=url), tuple(items[0]["bbox"]), 2015)
    cube = build_cube(found, epsg=EPSG, bounds=bounds, year=2015, chunk_size=64).compute()
    # The searched items as dicts (pystac would fetch their links from the stopped API), as
    # published: with proj:epsg, which stackstac reads. On the cube's grid.
    stack = stackstac.stack(
        [item.to_dict(transform_hrefs=False) for item in found],
        epsg=EPSG,
        bounds=cube.rio.bounds(),
        resolution=10,
        rescale=False,
        xy_coords="center",
        chunksize=64,
    )
    return cube, scenes, transform, monthly_composites(stack).compute()


def test_cube_grid_is_the_patch_bbox_snapped_to_10m(patch_cube):
    cube, _, transform, _ = patch_cube
    assert cube.rio.crs.to_epsg() == EPSG
    # bbox 465181.05, 5079244.89, 466180.53, 5080254.63 snapped outward to multiples of 10 m.
    assert cube.rio.transform() == Affine(10.0, 0.0, 465180.0, 0.0, -10.0, 5080260.0)
    assert cube.sizes["x"] == 101 and cube.sizes["y"] == 102
    assert cube["x"].values[0] == 465185.0 and cube["y"].values[0] == 5080255.0
    assert abs(transform.a - 9.9948) < 1e-4 and abs(-transform.e - 9.9975) < 1e-4


def test_cloudy_dates_drop_out_and_values_sit_on_the_right_pixels(patch_cube):
    cube, scenes, transform, _ = patch_cube
    assert [s[0][:10] for s in scenes] == [
        "2015-07-11",
        "2015-07-31",
        "2015-08-20",
        "2015-08-30",
        "2015-09-09",
    ]
    assert [(s[2] == 9).mean() for s in scenes] == [0.0, 1.0, 1.0, 0.0, 0.0]
    # The patch pixel holding each cube pixel centre; centres within 1 % of a patch pixel edge
    # are left out, as rounding may put them on either side.
    xs, ys = np.meshgrid(cube["x"].values, cube["y"].values)
    col, row = ~transform * (xs, ys)
    height, width = scenes[0][2].shape
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    clear_cut = (np.abs(col - np.round(col)) > 0.01) & (np.abs(row - np.round(row)) > 0.01)
    compared = inside & clear_cut
    assert compared.sum() > 0.9 * height * width
    r, c = row[compared].astype(int), col[compared].astype(int)

    composite = cube["composite"].values
    # July: only 07-11 (07-31 is cloud); August: only 08-30; September: 09-09, offset removed.
    for month, scene in ((7, scenes[0]), (8, scenes[3]), (9, scenes[4])):
        np.testing.assert_array_equal(composite[month - 1][:, compared], scene[1][:, r, c])
    other = [m - 1 for m in range(1, 13) if m not in (7, 8, 9)]
    assert np.isnan(composite[other]).all()
    assert (cube["valid_months"].values[compared] == 3).all()
    outside = ~inside
    assert outside.any() and (cube["valid_months"].values[outside] == 0).all()
    assert np.isnan(composite[:, :, outside]).all()


def test_items_and_harmonisation_are_recorded(patch_cube):
    cube, scenes, _, _ = patch_cube
    dates = [timestamp[:10] for timestamp, _, _ in scenes]
    assert cube.attrs["item_ids"] == [_item_id(date) for date in dates]
    offsets = {rule["item_id"]: rule["offset"] for rule in cube.attrs["harmonization"]}
    assert offsets == {_item_id(date): 1000 if date == OFFSET_DATE else 0 for date in dates}


def test_a_stackstac_stack_gives_the_same_composites(patch_cube):
    cube, _, _, stacked = patch_cube
    np.testing.assert_array_equal(stacked["composite"].values, cube["composite"].values)
    np.testing.assert_array_equal(stacked["valid_months"].values, cube["valid_months"].values)
    assert stacked.rio.transform() == cube.rio.transform() and stacked.rio.crs == cube.rio.crs
    assert stacked.attrs["harmonization"] == cube.attrs["harmonization"]
    assert np.isfinite(stacked["composite"].values).mean() > 0.2
