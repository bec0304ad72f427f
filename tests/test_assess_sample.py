"""`timesenclip sample`: stratified random samples of class maps, on a COG, a per-tile VRT and a
real third-party map, block by block."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from fixtures.classmaps import write_class_map, write_tiled_class_map
from pipeline.assess.classmap import ClassMap
from pipeline.assess.design import allocate, sample_map
from pipeline.cli import main
from timesenclip.common.errors import TimeSenCLIPError

NAMES = ["Cropland", "Woodland", "Water", "Artificial Land"]


@pytest.fixture(scope="module")
def land_cover(tmp_path_factory):
    """300 x 500 pixels of 10 m: a woodland half, cropland, a lake, a small town (300 pixels),
    and a nodata corner."""
    classes = np.ones((300, 500), np.uint8)
    classes[:, 250:] = 2
    classes[100:160, 50:150] = 3
    classes[200:215, 300:320] = 4
    classes[:40, :60] = 0
    folder = tmp_path_factory.mktemp("sample")
    return write_class_map(folder / "land_cover.tif", classes, NAMES), classes


def to_map(points: pd.DataFrame, classmap: ClassMap) -> tuple[np.ndarray, np.ndarray]:
    transformer = Transformer.from_crs("EPSG:4326", classmap.crs, always_xy=True)
    return transformer.transform(points["lon"].to_numpy(), points["lat"].to_numpy())


def pixels_of(points: pd.DataFrame, classmap: ClassMap) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = ~classmap.transform * to_map(points, classmap)
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


def test_proportional_allocation_keeps_a_minimum_per_class():
    sizes = allocate({1: 70_000, 2: 20_000, 3: 9_000, 4: 1_000}, 400, minimum=50)
    assert sizes == {1: 50 + 140, 2: 50 + 40, 3: 50 + 18, 4: 50 + 2}
    # A class smaller than the minimum gives all its pixels; the rest goes by area.
    assert allocate({1: 900, 2: 30}, 200, minimum=50) == {1: 170, 2: 30}


def test_equal_and_given_allocations():
    assert allocate({1: 1000, 2: 1000, 3: 10}, 100, "equal") == {1: 45, 2: 45, 3: 10}
    assert allocate({1: 1000, 2: 20}, None, "given", given={2: 20}) == {1: 0, 2: 20}
    with pytest.raises(TimeSenCLIPError, match="at most as many points as pixels"):
        allocate({1: 1000, 2: 20}, None, "given", given={2: 21})
    with pytest.raises(TimeSenCLIPError, match="raise --n or lower --min-per-class"):
        allocate({1: 1000, 2: 1000, 3: 1000}, 100, minimum=50)


def test_sample_of_a_cog(land_cover, tmp_path):
    path, classes = land_cover
    sample, paths = sample_map(path, 300, tmp_path / "points", minimum=40, seed=7, block=128)
    assert [p.name for p in paths] == ["points.gpkg", "points.csv"]
    table = pd.read_csv(paths[1])
    assert list(table.columns[:6]) == ["id", "lon", "lat", "map_value", "map_class", "stratum"]
    counts = np.bincount(classes.ravel(), minlength=5)
    # 40 each, the other 140 by area (66,600, 74,700, 6,000 and 300 pixels): 63.2, 70.9, 5.7
    # and 0.3, rounded by largest remainder to 63, 71, 6 and 0.
    allocation = {"Cropland": 103, "Woodland": 111, "Water": 46, "Artificial Land": 40}
    assert sample.allocation == allocation
    assert table["map_class"].value_counts().to_dict() == allocation
    # Every point is the centre of a pixel of its class, no pixel twice, none on nodata.
    rows, cols = pixels_of(table, ClassMap.open(path))
    assert np.array_equal(classes[rows, cols], table["map_value"].to_numpy())
    assert len(set(zip(rows, cols, strict=True))) == len(table)
    assert (table["stratum"] == table["map_class"]).all()
    weights = table.groupby("map_value")["inclusion_weight"].first()
    assert weights.to_dict() == {v: counts[v] / allocation[NAMES[v - 1]] for v in range(1, 5)}
    assert table["stratum_size"].to_numpy() == pytest.approx(counts[table["map_value"]])
    # The GeoPackage holds the same points, in WGS84.
    layer = gpd.read_file(paths[0])
    assert layer.crs.to_epsg() == 4326 and len(layer) == 300
    np.testing.assert_allclose(layer.geometry.x, table["lon"], rtol=0, atol=1e-9)


def test_the_same_seed_gives_the_same_points(land_cover, tmp_path):
    path, _ = land_cover
    first, _ = sample_map(path, 200, tmp_path / "a", seed=3, minimum=20)
    again, _ = sample_map(path, 200, tmp_path / "b", seed=3, minimum=20)
    other, _ = sample_map(path, 200, tmp_path / "c", seed=4, minimum=20)
    pd.testing.assert_frame_equal(first.points, again.points)
    assert not first.points[["lon", "lat"]].equals(other.points[["lon", "lat"]])


def test_a_class_sampled_whole_gives_every_pixel_once_across_blocks(land_cover, tmp_path):
    """Ranks map one-to-one onto a class's pixels, block by block: asking for all 300 town
    pixels (spread over 4 blocks of 64) returns each of them."""
    path, classes = land_cover
    sample, _ = sample_map(
        path, None, tmp_path / "town", per_class={"Artificial Land": 300}, block=64
    )
    rows, cols = pixels_of(sample.points, ClassMap.open(path))
    assert set(zip(rows, cols, strict=True)) == set(zip(*np.nonzero(classes == 4), strict=True))


def test_sample_of_a_per_tile_vrt(land_cover, tmp_path):
    """A region written as per-tile COGs and a VRT is sampled through the VRT: class names from
    the VRT, points on the right pixels of the right tiles."""
    _, classes = land_cover
    vrt = write_tiled_class_map(tmp_path, classes, NAMES, tile=128)
    classmap = ClassMap.open(vrt)
    assert classmap.names == dict(enumerate(NAMES, start=1)) and classmap.nodata == 0
    sample, _ = sample_map(vrt, 120, tmp_path / "vrt_points", minimum=20, seed=1, block=100)
    rows, cols = pixels_of(sample.points, classmap)
    assert np.array_equal(classes[rows, cols], sample.points["map_value"].to_numpy())
    assert sample.pixels == {
        name: int((classes == v).sum()) for v, name in enumerate(NAMES, start=1)
    }


def test_sample_verb(land_cover, tmp_path, capsys):
    path, _ = land_cover
    out = tmp_path / "cli"
    argv = ["sample", str(path), "--n", "100", "--out", str(out), "--min-per-class", "10"]
    assert main([*argv, "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "Artificial Land" in printed and str(out.with_suffix(".csv")) in printed
    assert len(pd.read_csv(out.with_suffix(".csv"))) == 100
    assert main([*argv, "--per-class", "Swamp=3"]) == 2
    assert "not a class of" in capsys.readouterr().err


def test_sample_of_a_real_class_map(realdata, tmp_path):
    """The sits classifier's map (UTM 20S, 20 m, nodata 255, no class names): names are the
    pixel values, a pixel is 0.04 ha."""
    path = realdata / "classmap" / "SENTINEL2_MSI_20LNR_2020-06-04_2021-08-26_class_v1.tif"
    classmap = ClassMap.open(path)
    census = classmap.census()
    assert census.pixels == {1: 142368, 2: 12049, 3: 91046, 4: 350469}
    assert census.area_m2[2] == pytest.approx(12049 * 400)
    sample, _ = sample_map(path, 400, tmp_path / "real", seed=0)
    # 50 each, and the other 200 by area: 47.8, 4.0, 30.6 and 117.6 rounded by largest remainder.
    assert sample.allocation == {"1": 98, "2": 54, "3": 80, "4": 168}
    values, on_class = classmap.values_at(*to_map(sample.points, classmap))
    assert on_class.all() and np.array_equal(values, sample.points["map_value"])


def test_class_names_from_a_gdal_sidecar(tmp_path):
    """A GeoTIFF written by other tools may name its classes only in GDAL's .aux.xml."""
    path = tmp_path / "other.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", crs="EPSG:32631", transform=Affine(10, 0, 0, 0, -10, 40),
                       **profile) as dst:  # fmt: skip
        dst.write(np.ones((1, 4, 4), np.uint8))
    categories = "".join(f"<Category>{n}</Category>" for n in ["no data", "Forest", "Water"])
    path.with_name("other.tif.aux.xml").write_text(
        f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames>'
        "</PAMRasterBand></PAMDataset>"
    )
    classmap = ClassMap.open(path)
    assert classmap.nodata == 0 and classmap.names == {1: "Forest", 2: "Water"}
