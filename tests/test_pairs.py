"""Pairs store: label routing, Sen4Map HDF5 reader, LUCAS photo join, points, cube sampling."""

import datetime
import json

import h5py
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from pyproj import Transformer

from encoder.ground import DIRECTIONS, GroundEmbeddings
from encoder.label_routes import LABEL_ROUTES, TASKS, LabelRouter
from encoder.pairs import Pairs, PairsError
from encoder.pairs_store import PairsWriter, read_pairs, write_pairs
from encoder.preprocess import BANDS
from encoder.prompts import class_set, reference_classes
from encoder.sen4map import Sen4MapLayout, pairs_from_sen4map
from fixtures.synthetic import write_synthetic_collection
from pipeline.cube.lazy import build_cube
from pipeline.cube.samples import PointsError, pairs_from_cube, read_points, sample_cube
from pipeline.search.stac import StacSource

# The file order of a Sen4Map-like patch: 12 bands, named the short way, not in model order.
FILE_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"][::-1]
DIM = 6


def index(task, name):
    return [c.name for c in class_set(task)].index(name)


# --- label routing ------------------------------------------------------------------------------


def test_routing_indices_follow_the_class_sets():
    for task, (yaml_key, _, _) in LABEL_ROUTES.items():
        assert [e["name"] for e in reference_classes(yaml_key)] == [c.name for c in class_set(task)]


def test_crop_labels_go_to_crop_and_bioregion_to_bioregion():
    router = LabelRouter()
    labels = router.route(
        {
            "lc1": "B13",
            "lu1": "U111",
            "bioregion": "Atlantic",
            "eunis": "Mesic grasslands",
            "country": "AT",
        }
    )
    assert labels["land_cover"] == index("land_cover", "Cropland")
    assert labels["crop_type"] == index("crop_type", "Barley")
    assert labels["land_use"] == index("land_use", "Agriculture")
    assert labels["bioregion"] == index("bioregion", "Atlantic")
    assert labels["eunis_habitat"] == index("eunis_habitat", "Mesic grasslands")
    assert labels["country"] == index("country", "Austria")
    # The crop index of Barley is not the bioregion's, and the land-cover code never feeds either.
    assert labels["crop_type"] != labels["land_cover"]
    alone = router.route({"lc1": "B13"})
    assert alone["bioregion"] == -1 and alone["crop_type"] == index("crop_type", "Barley")
    assert router.route({"bioregion": "3"})["bioregion"] == 3
    assert router.route({"bioregion": 3.0})["bioregion"] == 3
    assert router.route({"bioregion": "3"})["crop_type"] == -1


def test_non_crop_land_has_no_crop_label_and_is_not_unknown():
    router = LabelRouter()
    labels = router.route({"lc1": "C10"})
    assert labels["crop_type"] == -1 and labels["land_cover"] == index("land_cover", "Woodland")
    assert not router.unknown
    router.route({"lc1": "Z99", "bioregion": "Atlantis"})
    assert router.unknown == {("land_cover", "Z99"): 1, ("bioregion", "Atlantis"): 1}


def test_task_named_values_and_missing_values():
    router = LabelRouter(["land_cover", "crop_type"])
    assert router.route({"land_cover": "water", "lc1": "B13"})["land_cover"] == index(
        "land_cover", "Water"
    )
    assert router.route({"land_cover": 2})["land_cover"] == 2
    assert router.route({"lc1": "NA", "land_cover": None}) == {"land_cover": -1, "crop_type": -1}
    assert router.route({"lc1": b"b11"})["crop_type"] == index("crop_type", "Common wheat")
    with pytest.raises(PairsError, match="unknown task"):
        LabelRouter(["habitats"])


# --- Sen4Map HDF5 + LUCAS embeddings -------------------------------------------------------------


def series_for(i):
    return np.arange(120, dtype=np.float32).reshape(12, 10) * 10 + 1000 * i


def write_h5(path, points, nested=False):
    """Points: (group name, attrs, (12, 10) series in BANDS order); off-centre pixels are -5."""
    with h5py.File(path, "w") as f:
        f.attrs["bands"] = np.array(FILE_BANDS, dtype="S")
        for name, attrs, series in points:
            group = f.create_group(f"tile/{name}" if nested else name)
            patch = np.full((12, len(FILE_BANDS), 64, 64), -5.0, dtype=np.float32)
            for b, band in enumerate(BANDS):
                patch[:, FILE_BANDS.index(band.replace("B0", "B")), 32, 32] = series[:, b]
            group.create_dataset("image", data=patch)
            group.attrs.update(attrs)


def lucas(points):
    """A LUCAS-style embedding dict for (country, point id, directions) triples."""
    rng = np.random.default_rng(0)
    return {
        f"{c}_{pid}{d}": rng.normal(size=DIM).astype(np.float32)
        for c, pid, ds in points
        for d in ds
    }


@pytest.fixture
def sen4map(tmp_path):
    attrs = [
        {
            "point_id": "1001",
            "lc1": "B13",
            "lu1": "U111",
            "EUNIS_L2": "Arable land and market gardens",
            "bioregion_class_code": "Atlantic",
            "nuts0": "FR",
            "lon": 1.5,
            "lat": 47.0,
        },
        {
            "point_id": "1002",
            "lc1": "C10",
            "lu1": "U120",
            "EUNIS_L2": "Coniferous woodland",
            "bioregion_class_code": "Alpine",
            "nuts0": "AT",
            "lon": 13.0,
            "lat": 47.2,
        },
        {"point_id": "1003", "lc1": "E20", "nuts0": "AT", "lon": 14.0, "lat": 48.0},
    ]
    points = [(f"p{i}", a, series_for(i)) for i, a in enumerate(attrs)]
    h5 = tmp_path / "sen4map.h5"
    write_h5(h5, points, nested=True)
    emb = lucas([("FR", "1001", "WENS"), ("AT", "1002", "NS")])  # 1003 has no photos
    path = tmp_path / "lucas.pt"
    GroundEmbeddings.from_mapping(emb).save(path)
    return h5, path, emb


def test_pairs_from_sen4map(sen4map, tmp_path):
    h5, embeddings, emb = sen4map
    out = tmp_path / "pairs.zarr"
    stats = pairs_from_sen4map([h5], embeddings, out)
    assert (stats.read, stats.no_photos, stats.kept) == (3, 1, 2)
    pairs = read_pairs(out)
    assert pairs.point_id.tolist() == ["1001", "1002"]
    # The centre pixel in model band order, not the off-centre -5 values.
    np.testing.assert_array_equal(pairs.series[0], series_for(0))
    np.testing.assert_array_equal(pairs.series[1], series_for(1))
    assert pairs.month_mask.all()
    assert pairs.photo_mask.tolist() == [[True] * 4, [False, False, True, True]]
    for d, direction in enumerate(DIRECTIONS):
        np.testing.assert_array_equal(pairs.ground[0, d], emb[f"FR_1001{direction}"])
    np.testing.assert_array_equal(pairs.ground[1, 0], np.zeros(DIM))
    np.testing.assert_array_equal(pairs.ground[1, 3], emb["AT_1002S"])
    assert pairs.labels["crop_type"].tolist() == [index("crop_type", "Barley"), -1]
    assert pairs.labels["bioregion"].tolist() == [
        index("bioregion", "Atlantic"),
        index("bioregion", "Alpine"),
    ]
    assert pairs.labels["eunis_habitat"][1] == index("eunis_habitat", "Coniferous woodland")
    assert pairs.raw["lc1"].tolist() == ["B13", "C10"]
    np.testing.assert_allclose(pairs.lon, [1.5, 13.0])
    assert set(pairs.labels) == set(TASKS)
    with pytest.raises(PairsError, match="already exists"):
        pairs_from_sen4map([h5], embeddings, out)


def test_pairs_from_sen4map_reference_layout(tmp_path):
    """The published file layout: top-level Lucas_Point_<id> groups, `image` in BANDS order,
    Coordinates/nuts0/lc1... as group attributes, no bands, point_id, lon or lat attribute."""
    h5 = tmp_path / "sen4map_ref.h5"
    points = {
        "47243144": {"nuts0": "AT", "lc1": "B13", "lu1": "U111", "bioregion_class_code": "Alpine"},
        "31863042": {"nuts0": "FR", "lc1": "C10", "EUNIS_L2": "Coniferous woodland"},
        "99999999": {"nuts0": "DE", "lc1": "E20"},  # no photos
    }
    with h5py.File(h5, "w") as f:
        for i, (pid, attrs) in enumerate(points.items()):
            group = f.create_group(f"Lucas_Point_{pid}")
            patch = np.full((12, 10, 5, 5), -5.0, np.float32)
            patch[:, :, 2, 2] = series_for(i)
            group.create_dataset("image", data=patch)
            group.attrs.update(attrs)
            group.attrs["Coordinates"] = np.array([10.0 + i, 47.0 + i])
    emb = lucas([("AT", "47243144", "WENS"), ("FR", "31863042", "WE")])
    embeddings = tmp_path / "lucas.pt"
    GroundEmbeddings.from_mapping(emb).save(embeddings)
    stats = pairs_from_sen4map([h5], embeddings, tmp_path / "ref.zarr")
    assert (stats.read, stats.no_photos, stats.kept) == (3, 1, 2)
    pairs = read_pairs(tmp_path / "ref.zarr")
    assert sorted(pairs.point_id.tolist()) == ["31863042", "47243144"]
    at, fr = (pairs.point_id.tolist().index(p) for p in ("47243144", "31863042"))
    np.testing.assert_array_equal(pairs.series[at], series_for(0))
    np.testing.assert_array_equal(pairs.series[fr], series_for(1))
    np.testing.assert_array_equal(pairs.ground[at, 3], emb["AT_47243144S"])
    assert pairs.photo_mask[fr].tolist() == [True, True, False, False]
    assert (pairs.lon[at], pairs.lat[at], pairs.lon[fr], pairs.lat[fr]) == (10.0, 47.0, 11.0, 48.0)
    assert pairs.labels["country"][at] == index("country", "Austria")
    assert pairs.labels["crop_type"][at] == index("crop_type", "Barley")
    assert pairs.labels["bioregion"][at] == index("bioregion", "Alpine")
    assert pairs.labels["land_cover"][fr] == index("land_cover", "Woodland")
    assert pairs.labels["eunis_habitat"][fr] == index("eunis_habitat", "Coniferous woodland")
    assert pairs.raw["country"][fr] == "FR"
    swapped = Sen4MapLayout(coordinate_order="latlon")
    pairs_from_sen4map([h5], embeddings, tmp_path / "swapped.zarr", layout=swapped)
    assert read_pairs(tmp_path / "swapped.zarr").lat[at] == 10.0


def test_sen4map_custom_layout_and_missing_months(tmp_path):
    h5 = tmp_path / "custom.h5"
    series = series_for(0)
    with h5py.File(h5, "w") as f:
        group = f.create_group("A")
        patch = np.zeros((12, 10, 5, 5), np.float32)
        patch[:, :, 1, 3] = series
        patch[4, :, 1, 3] = -9999.0  # no data in May
        ds = group.create_dataset("s2", data=patch)
        ds.attrs.update({"LC": "A10", "bio": "Boreal"})
    embeddings = tmp_path / "g.npz"
    GroundEmbeddings.from_mapping(lucas([("SE", "A", "W")])).save(embeddings)
    layout = Sen4MapLayout(
        data="s2", labels={"lc1": "LC", "bioregion": "bio"}, pixel=(1, 3), nodata=-9999.0
    )
    pairs_from_sen4map([h5], embeddings, tmp_path / "p.zarr", layout=layout)
    pairs = read_pairs(tmp_path / "p.zarr", tasks=["land_cover", "bioregion"])
    assert pairs.point_id.tolist() == ["A"]  # the group name when there is no id attribute
    assert pairs.month_mask[0].tolist() == [m != 4 for m in range(12)]
    assert np.isnan(pairs.series[0, 4]).all()
    np.testing.assert_array_equal(pairs.series[0, 5], series[5])
    assert pairs.labels["bioregion"][0] == index("bioregion", "Boreal")
    assert pairs.labels["land_cover"][0] == index("land_cover", "Artificial Land")


def test_sen4map_errors(tmp_path):
    embeddings = tmp_path / "g.pt"
    GroundEmbeddings.from_mapping(lucas([("AT", "1", "W")])).save(embeddings)
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.create_group("p").create_dataset("image", data=np.zeros((12, 7, 4, 4)))
    with pytest.raises(PairsError, match="7 bands and no 'bands' attribute"):
        pairs_from_sen4map([bad], embeddings, tmp_path / "x.zarr")
    with pytest.raises(PairsError, match="no group holds a dataset named 'cube'"):
        pairs_from_sen4map([bad], embeddings, tmp_path / "y.zarr", layout=Sen4MapLayout("cube"))
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(PairsError, match="does not exist"):
        read_pairs(tmp_path / "nothing.zarr")


# --- the store ----------------------------------------------------------------------------------


def tiny_pairs(n=5, photos=4):
    rng = np.random.default_rng(1)
    series = rng.uniform(100, 3000, (n, 12, 10)).astype(np.float32)
    series[0, 2] = np.nan
    return Pairs(
        np.array([f"pt{i}" for i in range(n)]),
        np.linspace(0, 1, n),
        np.linspace(40, 41, n),
        series,
        np.isfinite(series).all(-1),
        rng.normal(size=(n, photos, DIM)).astype(np.float32),
        np.ones((n, photos), bool),
        {"land_cover": np.arange(n, dtype=np.int16) % 8},
        {"lc1": np.array(["B11"] * n)},
    )


def test_store_roundtrip_and_subset(tmp_path):
    pairs = tiny_pairs()
    write_pairs(tmp_path / "s.zarr", pairs)
    back = read_pairs(tmp_path / "s.zarr")
    for name in ("point_id", "lon", "lat", "month_mask", "ground", "photo_mask"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pairs, name))
    np.testing.assert_array_equal(back.series, pairs.series)  # NaN compares equal here
    np.testing.assert_array_equal(back.labels["land_cover"], pairs.labels["land_cover"])
    assert len(back.subset(back.labels["land_cover"] > 1)) == 3
    with pytest.raises(PairsError, match="no labels for crop_type"):
        read_pairs(tmp_path / "s.zarr", tasks=["crop_type"])


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError), PairsWriter(out, ground_dim=DIM, tasks=["land_cover"]) as w:
        w.append(tiny_pairs())
        raise RuntimeError("crash")
    assert not out.exists()
    with (
        pytest.raises(PairsError, match="do not fit"),
        PairsWriter(tmp_path / "t.zarr", ground_dim=DIM + 1, tasks=["land_cover"]) as w,
    ):
        w.append(tiny_pairs())
    assert not (tmp_path / "t.zarr").exists()
    (tmp_path / "other.zarr").mkdir()
    with pytest.raises(PairsError, match="not a"):
        read_pairs(tmp_path / "other.zarr")


def test_pairs_shape_check():
    p = tiny_pairs()
    with pytest.raises(PairsError, match="series has shape"):
        Pairs(p.point_id, p.lon, p.lat, p.series[:, :6], p.month_mask, p.ground, p.photo_mask)


# --- points files and cube sampling (pipeline side) ---------------------------------------------


def test_read_points_csv_and_geojson(tmp_path):
    csv_path = tmp_path / "pts.csv"
    csv_path.write_text("point_id,lon,lat,lc1\nA,2.5,48.1,B11\nB,2.6,48.2,C10\n")
    points = read_points(csv_path)
    assert [(p["point_id"], p["lon"], p["lc1"]) for p in points] == [
        ("A", 2.5, "B11"),
        ("B", 2.6, "C10"),
    ]
    gj = tmp_path / "pts.geojson"
    gj.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "id": "X",
                        "geometry": {"type": "Point", "coordinates": [1, 2]},
                        "properties": {"bioregion": "Alpine"},
                    }
                ],
            }
        )
    )
    assert read_points(gj) == [{"bioregion": "Alpine", "point_id": "X", "lon": 1.0, "lat": 2.0}]
    (tmp_path / "bad.csv").write_text("id,x,y\n1,2,3\n")
    with pytest.raises(PointsError, match="lacks the column"):
        read_points(tmp_path / "bad.csv")


def test_sample_cube_picks_the_pixel_holding_each_point():
    xs = 500005.0 + 10 * np.arange(4)  # pixel centres, 10 m
    ys = 4800095.0 - 10 * np.arange(3)  # north up
    values = np.arange(12 * 10 * 3 * 4, dtype=np.float32).reshape(12, 10, 3, 4)
    cube = xr.Dataset(
        {"composite": (("month", "band", "y", "x"), values)},
        coords={"month": np.arange(1, 13), "band": list(BANDS), "y": ys, "x": xs},
    )
    x = np.array([500001.0, 500038.0, 499990.0])  # column 0, column 3, outside
    y = np.array([4800099.0, 4800071.0, 4800095.0])  # row 0, row 2, inside
    out = sample_cube(cube, x, y)
    np.testing.assert_array_equal(out[0], values[:, :, 0, 0])
    np.testing.assert_array_equal(out[1], values[:, :, 2, 3])
    assert np.isnan(out[2]).all()


def test_sample_cube_one_pixel_wide_uses_the_cube_resolution():
    """A cube one pixel wide (a lone point's cube) at 20 m: the size comes from its transform."""
    values = np.arange(12 * 10 * 2, dtype=np.float32).reshape(12, 10, 2, 1)
    cube = xr.Dataset(
        {"composite": (("month", "band", "y", "x"), values)},
        coords={"month": np.arange(1, 13), "band": list(BANDS), "y": [90.0, 70.0], "x": [10.0]},
    )
    cube = cube.rio.write_crs(32632).rio.write_transform(Affine(20, 0, 0, 0, -20, 100))
    x = np.array([18.0, 2.0, 22.0])  # 8 m east, 8 m west of the centre, outside
    y = np.array([88.0, 62.0, 88.0])  # row 0, row 1 (8 m south of its centre), row 0
    out = sample_cube(cube, x, y)
    np.testing.assert_array_equal(out[0], values[:, :, 0, 0])
    np.testing.assert_array_equal(out[1], values[:, :, 1, 0])
    assert np.isnan(out[2]).all()
    single = cube.isel(y=[1])  # one pixel wide and tall
    np.testing.assert_array_equal(sample_cube(single, x[1:2], y[1:2])[0], values[:, :, 1, 0])


def test_pairs_from_cube_end_to_end(tmp_path):
    synthetic = write_synthetic_collection(
        tmp_path / "s2",
        shape=(16, 16),
        dates=[datetime.date(2023, m, 10) for m in range(1, 13)],
        cloud_fraction=0.3,
    )
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": synthetic.items}))
    xmin, _, _, ymax = synthetic.bounds
    pixels = {"A": (2, 3), "B": (10, 14), "C": (15, 0)}  # (row, col)
    xy = {p: (xmin + 10 * c + 5, ymax - 10 * r - 5) for p, (r, c) in pixels.items()}
    to_lonlat = Transformer.from_crs(synthetic.epsg, 4326, always_xy=True)
    rows = ["point_id,lon,lat,lc1,country"]
    for p, (x, y) in xy.items():
        lon, lat = to_lonlat.transform(x, y)
        rows.append(f"{p},{lon!r},{lat!r},B11,FR")
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    embeddings = tmp_path / "photos.npz"
    GroundEmbeddings.from_mapping(lucas([("FR", "A", "WE"), ("FR", "B", "N")])).save(embeddings)

    stats = pairs_from_cube(
        tmp_path / "points.csv",
        embeddings,
        tmp_path / "pairs.zarr",
        source=StacSource(file=items),
        year=2023,
        progress=False,
        chunk_size=16,
    )
    assert (stats.read, stats.no_photos, stats.kept) == (3, 1, 2)  # C has no photo
    pairs = read_pairs(tmp_path / "pairs.zarr")
    assert pairs.point_id.tolist() == ["A", "B"]
    cube = build_cube(
        synthetic.items, epsg=synthetic.epsg, bounds=synthetic.bounds, year=2023
    ).compute()
    for i, p in enumerate(["A", "B"]):
        row, col = pixels[p]
        expected = cube["composite"].values[:, :, row, col]
        np.testing.assert_array_equal(pairs.series[i], expected)
        assert pairs.month_mask[i].tolist() == np.isfinite(expected).all(1).tolist()
    assert pairs.labels["crop_type"].tolist() == [index("crop_type", "Common wheat")] * 2
    assert pairs.photo_mask.tolist() == [[True, True, False, False], [False, False, True, False]]
