"""UTM zones, the fixed tile grid, zone splitting and region masks."""

import itertools

import numpy as np
import pytest
from pyproj import Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info

from pipeline.geo.tiles import Tile, region_mask, tiles_for_region, utm_epsg, zone_groups
from timesenclip.common.errors import TimeSenCLIPError

MONTPELLIER = (3.80, 43.55, 3.95, 43.65)
ACROSS_6E = (5.9, 45.0, 6.1, 45.1)
ACROSS_EQUATOR = (2.99, -0.01, 3.01, 0.02)


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (3.87, 43.6, 32631),  # Montpellier
        (151.21, -33.87, 32756),  # Sydney
        (6.0, 45.0, 32632),  # a zone boundary belongs to the zone east of it
        (5.999, 45.0, 32631),
        (-3.70, 40.42, 32630),  # Madrid, negative longitude
        (-74.0, 40.7, 32618),  # New York
        (-58.38, -34.60, 32721),  # Buenos Aires
        (0.0, 0.0, 32631),  # the equator counts as north
        (-180.0, 10.0, 32601),
        (180.0, 10.0, 32660),
        (10.75, 59.91, 32632),  # Oslo: standard zone, no Norway exception
    ],
)
def test_utm_epsg_known_places(lon, lat, epsg):
    assert utm_epsg(lon, lat) == epsg


def test_utm_epsg_agrees_with_the_proj_database_away_from_exceptions():
    lons = [-120.5, -61.2, -3.3, 2.5, 44.9, 170.7]
    for lon, lat in itertools.product(lons, [-12.2, 50.8]):
        infos = query_utm_crs_info(
            datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat)
        )
        assert utm_epsg(lon, lat) in {int(i.code) for i in infos}, (lon, lat)


@pytest.mark.parametrize(("lon", "lat"), [(181.0, 0.0), (0.0, 84.5), (0.0, -80.5)])
def test_utm_epsg_rejects_points_outside_utm(lon, lat):
    with pytest.raises(TimeSenCLIPError, match="outside the UTM system"):
        utm_epsg(lon, lat)


def test_tile_count_and_bounds_for_a_known_bbox():
    # On the central meridian of zone 31 near the equator x = 500000 + 111319.5 m/deg * 0.9996 *
    # dlon and y = 110574 m/deg * 0.9996 * lat: lon 2.99..3.01 -> x 498887..501113, lat 0.001..0.02
    # -> y 110.5..2211; snapped outward to 10 m and cut at 2560 m cells -> two tiles.
    tiles = tiles_for_region((2.99, 0.001, 3.01, 0.02), 256, 10.0, name="equator")
    assert [t.id for t in tiles] == ["32631_x0194_y0000", "32631_x0195_y0000"]
    assert tiles[0].bounds == (498880.0, 110.0, 499200.0, 2220.0)
    assert tiles[1].bounds == (499200.0, 110.0, 501120.0, 2220.0)
    assert [t.shape for t in tiles] == [(211, 32), (211, 192)]
    assert all(t.region == "equator" and t.resolution == 10.0 for t in tiles)


def test_montpellier_default_grid():
    tiles = tiles_for_region(MONTPELLIER, 4096, 10.0, name="montpellier")
    assert [t.id for t in tiles] == [
        "32631_x0013_y0118",
        "32631_x0014_y0118",
        "32631_x0013_y0117",
        "32631_x0014_y0117",
    ]
    # the four tiles partition the region's own 12.23 x 11.24 km window, not four 4096 px cells
    assert tiles[2].bounds == (564510.0, 4822200.0, 573440.0, 4833280.0)
    assert sum(t.shape[0] * t.shape[1] for t in tiles) == 1223 * 1124


def _check_tiling(tiles: list[Tile], tile_size: int, res: float) -> None:
    span = tile_size * res
    by_cell = {(t.epsg, t.col, t.row): t for t in tiles}
    assert len(by_cell) == len(tiles), "one tile per cell"
    for t in tiles:
        xmin, ymin, xmax, ymax = t.bounds
        assert all(abs(v / res - round(v / res)) < 1e-9 for v in t.bounds), "pixel aligned"
        assert t.shape == (round((ymax - ymin) / res), round((xmax - xmin) / res))
        assert t.col * span <= xmin < xmax <= (t.col + 1) * span, "inside its grid cell"
        assert t.row * span <= ymin < ymax <= (t.row + 1) * span
        assert t.transform @ (0, 0) == (xmin, ymax)
        assert t.transform @ (t.shape[1], t.shape[0]) == pytest.approx((xmax, ymin))
        east = by_cell.get((t.epsg, t.col + 1, t.row))
        if east is not None:  # shared edge: no gap, no overlap
            assert east.bounds[0] == xmax and (east.bounds[1], east.bounds[3]) == (ymin, ymax)
        south = by_cell.get((t.epsg, t.col, t.row - 1))
        if south is not None:
            assert south.bounds[3] == ymin and (south.bounds[0], south.bounds[2]) == (xmin, xmax)
    for a, b in itertools.combinations(tiles, 2):
        if a.epsg == b.epsg:
            dx = min(a.bounds[2], b.bounds[2]) - max(a.bounds[0], b.bounds[0])
            dy = min(a.bounds[3], b.bounds[3]) - max(a.bounds[1], b.bounds[1])
            assert dx <= 0 or dy <= 0, f"{a.id} overlaps {b.id}"


def _lonlat_grid(bbox, n=41):
    lon, lat = np.meshgrid(np.linspace(bbox[0], bbox[2], n), np.linspace(bbox[1], bbox[3], n))
    return lon.ravel(), lat.ravel()


def _check_covers(tiles: list[Tile], lon: np.ndarray, lat: np.ndarray) -> None:
    """Every point lies in a tile of the CRS utm_epsg names for it."""
    epsg = np.array([utm_epsg(a, b) for a, b in zip(lon, lat, strict=True)])
    for code in np.unique(epsg):
        pick = epsg == code
        x, y = Transformer.from_crs(4326, int(code), always_xy=True).transform(lon[pick], lat[pick])
        inside = np.zeros(len(x), bool)
        for t in tiles:
            if t.epsg == code:
                xmin, ymin, xmax, ymax = t.bounds
                inside |= (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
        assert inside.all(), f"{(~inside).sum()} points of EPSG:{code} not covered"


@pytest.mark.parametrize(
    "bbox", [MONTPELLIER, ACROSS_6E, ACROSS_EQUATOR, (-70.0, -33.6, -69.8, -33.3)]
)
def test_tiles_cover_the_region_on_an_aligned_grid(bbox):
    tiles = tiles_for_region(bbox, 256, 10.0)
    _check_tiling(tiles, 256, 10.0)
    _check_covers(tiles, *_lonlat_grid(bbox))
    assert tiles == sorted(tiles, key=lambda t: (t.epsg, -t.row, t.col))
    assert tiles == tiles_for_region(bbox, 256, 10.0), "reruns give the same tiles"


def test_tiles_are_tight_around_the_projected_bbox():
    tiles = tiles_for_region(MONTPELLIER, 256, 10.0)
    to_utm = Transformer.from_crs(4326, 32631, always_xy=True)
    xmin, ymin, xmax, ymax = to_utm.transform_bounds(*MONTPELLIER, densify_pts=101)
    extent = [f(t.bounds[i] for t in tiles) for i, f in enumerate((min, min, max, max))]
    assert extent[0] <= xmin < extent[0] + 10 and extent[1] <= ymin < extent[1] + 10
    assert extent[2] - 10 < xmax <= extent[2] and extent[3] - 10 < ymax <= extent[3]


def test_grid_is_fixed_across_regions():
    big = {t.id: t for t in tiles_for_region((3.6, 43.4, 4.1, 43.8), 256, 10.0, name="big")}
    small = tiles_for_region(MONTPELLIER, 256, 10.0, name="small")
    assert len(small) < len(big)
    for t in small:
        cell = big[t.id]  # same cell id in the bigger region
        assert (cell.epsg, cell.col, cell.row) == (t.epsg, t.col, t.row)
        assert cell.bounds[0] <= t.bounds[0] and cell.bounds[1] <= t.bounds[1]
        assert cell.bounds[2] >= t.bounds[2] and cell.bounds[3] >= t.bounds[3]
        if t.shape == (256, 256):
            assert cell.bounds == t.bounds


def test_region_across_6e_is_split_between_zones():
    tiles = tiles_for_region(ACROSS_6E, 1024, 10.0)
    groups = zone_groups(tiles)
    assert list(groups) == [32631, 32632]
    assert all(t.epsg == epsg for epsg, group in groups.items() for t in group)
    assert sum(map(len, groups.values())) == len(tiles)
    west = max(t.lonlat_bounds[2] for t in groups[32631])
    east = min(t.lonlat_bounds[0] for t in groups[32632])
    assert west > 6.0 > east  # each part reaches the meridian; the parts overlap slightly


def test_region_across_equator_uses_both_hemispheres():
    tiles = tiles_for_region(ACROSS_EQUATOR, 256, 10.0)
    assert {t.epsg for t in tiles} == {32631, 32731}
    north = [t for t in tiles if t.epsg == 32631]
    south = [t for t in tiles if t.epsg == 32731]
    assert min(t.bounds[1] for t in north) == 0.0
    assert max(t.bounds[3] for t in south) == 10_000_000.0


def test_geometry_regions_skip_untouched_cells():
    # a right triangle over a 3 x 3 block of 2.56 km cells near Montpellier
    x0, y0 = 3.80, 43.55
    triangle = {
        "type": "Polygon",
        "coordinates": [[[x0, y0], [x0 + 0.09, y0], [x0, y0 + 0.065], [x0, y0]]],
    }
    bbox = (x0, y0, x0 + 0.09, y0 + 0.065)
    from_bbox = {t.id for t in tiles_for_region(bbox, 256, 10.0)}
    from_geom = tiles_for_region(triangle, 256, 10.0)
    assert {t.id for t in from_geom} < from_bbox, "cells beyond the hypotenuse are left out"
    _check_tiling(from_geom, 256, 10.0)
    lon, lat = _lonlat_grid(bbox)
    in_triangle = (lon - x0) / 0.09 + (lat - y0) / 0.065 <= 1.0
    _check_covers(from_geom, lon[in_triangle], lat[in_triangle])


def test_tiny_region_gives_one_small_tile():
    (tile,) = tiles_for_region((3.8701, 43.6101, 3.8702, 43.6102), 4096, 10.0)
    assert tile.shape[0] <= 3 and tile.shape[1] <= 3


def test_region_mask_keeps_region_pixels_in_their_own_zone():
    bbox = ACROSS_6E
    for tile in tiles_for_region(bbox, 128, 100.0):
        mask = region_mask(bbox, tile)
        assert mask.shape == tile.shape and mask.dtype == bool
        rows, cols = np.indices(tile.shape)
        x, y = tile.transform @ (cols + 0.5, rows + 0.5)
        lon, lat = Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(x, y)
        in_zone = lon < 6.0 if tile.epsg == 32631 else lon >= 6.0
        expected = (
            in_zone & (lon >= bbox[0]) & (lon <= bbox[2]) & (lat >= bbox[1]) & (lat <= bbox[3])
        )
        edges = [lon - bbox[0], lon - bbox[2], lon - 6.0, lat - bbox[1], lat - bbox[3]]
        clear = np.min(np.abs(edges), axis=0) > 1e-4  # ~10 m from every boundary
        assert 0 < expected.sum() < expected.size
        np.testing.assert_array_equal(mask[clear], expected[clear])


@pytest.mark.parametrize(
    ("area", "message"),
    [
        ((3.9, 43.5, 3.8, 43.6), "west must be less than east"),
        ((3.8, 43.6, 3.9, 43.5), "south must be less than north"),
        ((3.8, 85.0, 3.9, 86.0), "latitudes"),
        ((3.8, 43.5, 3.9), "four numbers"),
        ({"type": "Point", "coordinates": [3.8, 43.5]}, "Polygon or MultiPolygon"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[5e5, 4.8e6], [6e5, 4.8e6], [6e5, 4.9e6], [5e5, 4.8e6]]],
            },
            "EPSG:4326",
        ),
        ({"type": "Polygon", "coordinates": [[[3.8, 43.5], [3.9, 43.5]]]}, "at least 4"),
    ],
)
def test_bad_areas_are_refused(area, message):
    with pytest.raises(TimeSenCLIPError, match=message):
        tiles_for_region(area, 256, 10.0)


def test_bad_grid_arguments_are_refused():
    with pytest.raises(TimeSenCLIPError, match="tile_size_px"):
        tiles_for_region(MONTPELLIER, 0, 10.0)
    with pytest.raises(TimeSenCLIPError, match="resolution"):
        tiles_for_region(MONTPELLIER, 256, -10.0)
