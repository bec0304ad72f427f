"""`timesenclip assess`: a map, reference points in any of the usual files, the estimator the
design calls for, hectares from the map's own pixels, and every point that cannot count said."""

import json

import geopandas as gpd
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from affine import Affine
from pyproj import Geod, Transformer

from fixtures.classmaps import map_with_errors, write_class_map, write_tiled_class_map
from pipeline.assess.assessment import StrataSource, assess_map
from pipeline.assess.classmap import ClassMap
from pipeline.assess.design import sample_map
from pipeline.assess.estimators import estimate
from pipeline.assess.reference import ReferenceSource
from pipeline.cli import main
from pipeline.maps.cog import write_cog
from timesenclip.common.errors import TimeSenCLIPError

NAMES = ["Cropland", "Woodland", "Water", "Artificial Land"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A true land cover (blocks of 20 x 20 pixels), a map of it that is 85 % right, a nodata
    strip, and 240 sample points of the map labelled with the truth."""
    folder = tmp_path_factory.mktemp("assess")
    rng = np.random.default_rng(11)
    blocks = rng.choice([1, 2, 3, 4], size=(10, 15), p=[0.45, 0.35, 0.15, 0.05])
    truth = np.kron(blocks, np.ones((20, 20), np.uint8))
    mapped = map_with_errors(truth, 0.85, 4, rng).astype(np.uint8)
    mapped[:, :10] = 0
    map_path = write_class_map(folder / "land_cover.tif", mapped, NAMES)
    _, paths = sample_map(map_path, 240, folder / "points", minimum=40, seed=2)
    points = pd.read_csv(paths[1])
    classmap = ClassMap.open(map_path)
    rows, cols = pixel_of(points, classmap)
    points["reference"] = [NAMES[v - 1] for v in truth[rows, cols]]
    points.to_csv(folder / "labelled.csv", index=False)
    return folder, map_path, mapped, truth, points


def pixel_of(points, classmap):
    to_map = Transformer.from_crs("EPSG:4326", classmap.crs, always_xy=True)
    cols, rows = ~classmap.transform * to_map.transform(points["lon"], points["lat"])
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


def direct_estimate(points, mapped, strata=None, sizes=None):
    """The estimator on the sample, strata the map classes unless given."""
    codes = points["map_value"].to_numpy() - 1
    reference = points["reference"].map(NAMES.index).to_numpy()
    if strata is None:
        strata, sizes = codes, np.bincount(mapped.ravel(), minlength=5)[1:]
    return estimate(strata, codes, reference, sizes, NAMES)


def test_assess_verb_writes_the_numbers_the_estimator_gives(scene, tmp_path, capsys):
    folder, map_path, mapped, _, points = scene
    out = tmp_path / "report"
    argv = ["assess", str(map_path), "--reference", str(folder / "labelled.csv"), "--out"]
    assert main([*argv, str(out)]) == 0
    assert "Olofsson" in capsys.readouterr().out
    document = json.loads((out / "assessment.json").read_text())
    expected = direct_estimate(points, mapped)
    assert document["points"] == {"read": 240, "used": 240, "excluded": {}}
    assert document["overall_accuracy"]["estimate"] == pytest.approx(expected.overall)
    assert document["overall_accuracy"]["se"] == pytest.approx(expected.overall_se)
    lo, hi = document["overall_accuracy"]["ci95"]
    assert (lo + hi) / 2 == pytest.approx(expected.overall)
    assert hi - lo == pytest.approx(2 * 1.96 * expected.overall_se)
    np.testing.assert_allclose(document["error_matrix"]["area_proportions"], expected.proportions)
    # Hectares from the map's own 10 m UTM pixels: 0.01 ha each.
    pixels = np.bincount(mapped.ravel(), minlength=5)[1:]
    assert document["estimated_area_ha"] == pytest.approx(pixels.sum() * 0.01)
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["class"].tolist() == NAMES
    np.testing.assert_allclose(per_class["mapped_ha"], pixels * 0.01)
    np.testing.assert_allclose(per_class["area_ha"], expected.area * pixels.sum() * 0.01)
    np.testing.assert_allclose(per_class["area_ha_se"], expected.area_se * pixels.sum() * 0.01)
    np.testing.assert_allclose(per_class["users_accuracy_se"], expected.users_se)
    counts = pd.read_csv(out / "error_matrix_counts.csv", index_col=0)
    assert counts.loc["total", "total"] == 240
    assert counts.loc[NAMES, NAMES].to_numpy().tolist() == expected.counts.tolist()
    report = (out / "report.md").read_text()
    assert "![error matrix](error_matrix.png)" in report and "(areas.png)" in report
    assert f"{100 * expected.overall:.1f} %" in report
    for png in ("error_matrix.png", "areas.png"):
        height, width, _ = matplotlib.image.imread(out / png).shape
        assert height > 300 and width > 300


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet"])
def test_reference_files_in_other_formats_and_crs(scene, tmp_path, suffix):
    folder, map_path, _, _, points = scene
    frame = gpd.GeoDataFrame(
        points, geometry=gpd.points_from_xy(points["lon"], points["lat"]), crs="EPSG:4326"
    ).to_crs("EPSG:3035")  # not the map's CRS: points are reprojected
    path = tmp_path / f"labelled{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path)
    from_csv = assess_map(map_path, ReferenceSource(folder / "labelled.csv"))
    other = assess_map(map_path, ReferenceSource(path))
    assert other.accuracy.overall == pytest.approx(from_csv.accuracy.overall)
    np.testing.assert_allclose(other.area_ha, from_csv.area_ha)


def test_a_per_tile_vrt_is_assessed_like_the_cog(scene, tmp_path):
    folder, map_path, mapped, _, _ = scene
    vrt = write_tiled_class_map(tmp_path, mapped, NAMES, tile=128)
    reference = ReferenceSource(folder / "labelled.csv")
    from_cog, from_vrt = assess_map(map_path, reference), assess_map(vrt, reference)
    np.testing.assert_allclose(from_vrt.area_ha, from_cog.area_ha)
    np.testing.assert_allclose(from_vrt.accuracy.users_se, from_cog.accuracy.users_se)
    np.testing.assert_array_equal(from_vrt.mapped_pixels, from_cog.mapped_pixels)


def test_labels_by_pixel_value_or_through_a_class_map(scene, tmp_path):
    folder, map_path, _, _, points = scene
    base = assess_map(map_path, ReferenceSource(folder / "labelled.csv"))
    by_value = points.assign(reference=points["reference"].map(NAMES.index) + 1)
    by_value.to_csv(tmp_path / "values.csv", index=False)
    coded = points.assign(code=points["reference"].map({n: f"c{i}" for i, n in enumerate(NAMES)}))
    coded.to_csv(tmp_path / "coded.csv", index=False)
    (tmp_path / "codes.yaml").write_text("".join(f"c{i}: {n}\n" for i, n in enumerate(NAMES)))
    for source in (
        ReferenceSource(tmp_path / "values.csv"),
        ReferenceSource(tmp_path / "coded.csv", label="code", class_map=tmp_path / "codes.yaml"),
    ):
        assert assess_map(map_path, source).accuracy.overall == base.accuracy.overall


def test_points_off_the_map_on_nodata_or_unlabelled_are_listed_and_left_out(scene, tmp_path):
    _, map_path, _, _, points = scene
    classmap = ClassMap.open(map_path)
    to_wgs84 = Transformer.from_crs(classmap.crs, "EPSG:4326", always_xy=True)
    nodata_lon, nodata_lat = to_wgs84.transform(*(classmap.transform * (3.5, 50.5)))
    extra = pd.DataFrame(
        {
            "lon": [10.0, points["lon"].max() + 0.1, nodata_lon, points["lon"][0]],
            "lat": [50.0, points["lat"][0], nodata_lat, points["lat"][0]],
            "reference": ["Woodland", "Woodland", "Water", "Swamp"],
        }
    )
    pd.concat([points, extra], ignore_index=True).to_csv(tmp_path / "more.csv", index=False)
    out = tmp_path / "out"
    argv = ["assess", str(map_path), "--reference", str(tmp_path / "more.csv"), "--out", str(out)]
    assert main(argv) == 0
    document = json.loads((out / "assessment.json").read_text())
    assert document["points"]["used"] == 240
    assert document["points"]["excluded"] == {
        "outside the map": 2,
        "on the map's nodata": 1,
        "label 'Swamp' is not a class of the map (give --class-map)": 1,
    }
    excluded = pd.read_csv(out / "excluded_points.csv")
    assert excluded["row"].tolist() == [240, 241, 242, 243]
    assert excluded["lon"].iloc[0] == pytest.approx(10.0)
    assert "outside the map" in (out / "report.md").read_text()


def test_edge_cases_of_the_sample_are_handled_and_said(scene, tmp_path):
    """A stratum with one point, a mapped class never sampled, a reference class absent from the
    map (declared through the class map)."""
    _, map_path, mapped, _, points = scene
    water = points.index[points["map_class"] == "Water"]
    town = points.index[points["map_class"] == "Artificial Land"]
    edited = points.drop(index=[*water[1:], *town]).reset_index(drop=True)
    edited.loc[:4, "reference"] = "Wetlands"
    edited.to_csv(tmp_path / "edited.csv", index=False)
    (tmp_path / "classes.csv").write_text(
        "label,class\n" + "".join(f"{n},{n}\n" for n in [*NAMES, "Wetlands"])
    )
    source = ReferenceSource(tmp_path / "edited.csv", class_map=tmp_path / "classes.csv")
    result = assess_map(map_path, source)
    acc = result.accuracy
    assert acc.classes == (*NAMES, "Wetlands")
    notes = " ".join(result.notes)
    assert "stratum 'Water' has a single sample point" in notes
    assert "strata with no sample point ('Artificial Land')" in notes
    assert "reference classes absent from the map ('Wetlands')" in notes
    assert np.isnan(acc.users[3]) and np.isnan(acc.users[4]) and acc.producers[4] == 0
    assert result.mapped_pixels[4] == 0 and acc.area[4] > 0
    # The unsampled town's pixels are outside what the estimates describe.
    pixels = np.bincount(mapped.ravel(), minlength=5)[1:]
    assert result.estimated_total_ha == pytest.approx((pixels.sum() - pixels[3]) * 0.01)
    assert result.area_ha.sum() == pytest.approx(result.estimated_total_ha)


def test_strata_given_as_the_map_classes_reproduce_olofsson(scene, tmp_path):
    """Stehman's estimator with the map classes as strata is Olofsson's: through the sample's
    own stratum and stratum_size columns, and through a strata raster that is the map."""
    folder, map_path, _, _, _ = scene
    reference = ReferenceSource(folder / "labelled.csv")
    olofsson = assess_map(map_path, reference)
    for strata in (
        StrataSource(column="stratum", sizes="stratum_size"),
        StrataSource(raster=map_path),
    ):
        stehman = assess_map(map_path, reference, strata)
        assert stehman.method.startswith("Stehman")
        np.testing.assert_allclose(stehman.accuracy.area_se, olofsson.accuracy.area_se)
        np.testing.assert_allclose(stehman.accuracy.producers_se, olofsson.accuracy.producers_se)
        assert stehman.estimated_total_ha == pytest.approx(olofsson.estimated_total_ha)


def test_another_maps_sample_is_assessed_with_stehman(scene, tmp_path, capsys):
    """The sample drawn on one map assesses a second map of the same area: its strata are the
    first map's classes, given as a column and a CSV of stratum sizes."""
    folder, _, mapped, truth, points = scene
    second = map_with_errors(truth, 0.75, 4, np.random.default_rng(5)).astype(np.uint8)
    second[:, :10] = 0
    second_path = write_class_map(tmp_path / "second.tif", second, NAMES)
    sizes = np.bincount(mapped.ravel(), minlength=5)[1:]
    (tmp_path / "sizes.csv").write_text(
        "stratum,size\n" + "".join(f"{n},{s}\n" for n, s in zip(NAMES, sizes, strict=True))
    )
    out = tmp_path / "second"
    argv = ["assess", str(second_path), "--reference", str(folder / "labelled.csv")]
    argv += ["--strata", "stratum", "--strata-sizes", str(tmp_path / "sizes.csv")]
    assert main([*argv, "--out", str(out), "--report", "html"]) == 0
    assert "Stehman" in capsys.readouterr().out
    rows, cols = pixel_of(points, ClassMap.open(second_path))
    on_second = points.assign(map_value=second[rows, cols])
    strata = points["map_value"].to_numpy() - 1
    expected = direct_estimate(on_second, second, strata, sizes)
    document = json.loads((out / "assessment.json").read_text())
    assert document["overall_accuracy"]["estimate"] == pytest.approx(expected.overall)
    assert document["overall_accuracy"]["se"] == pytest.approx(expected.overall_se)
    areas = [c["area_proportion"]["se"] for c in document["per_class"]]
    np.testing.assert_allclose(areas, expected.area_se)
    assert "<table>" in (out / "report.html").read_text()


def test_bad_reference_input_is_one_clear_error(scene, tmp_path):
    folder, map_path, _, _, _ = scene
    with pytest.raises(TimeSenCLIPError, match="no label column 'truth'"):
        assess_map(map_path, ReferenceSource(folder / "labelled.csv", label="truth"))
    pd.DataFrame({"lon": [20.0], "lat": [10.0], "reference": ["Water"]}).to_csv(
        tmp_path / "far.csv", index=False
    )
    with pytest.raises(TimeSenCLIPError, match="none of the 1 reference points can be used"):
        assess_map(map_path, ReferenceSource(tmp_path / "far.csv"))


def test_pixel_areas_of_a_geographic_map_are_taken_on_the_ellipsoid(tmp_path):
    """A map in lon/lat: pixel areas shrink northwards, and they add up to the area of the
    map's extent on the WGS84 ellipsoid (to 1 in 10^6: a pixel's top and bottom are geodesics,
    the extent's are a longer geodesic)."""
    classes = np.ones((40, 30), np.uint8)
    classes[20:] = 2
    path = tmp_path / "geographic.tif"
    transform = Affine(0.001, 0, 3.0, 0, -0.001, 44.0)
    write_cog(path, classes, transform=transform, crs="EPSG:4326", nodata=0)
    census = ClassMap.open(path).census()
    extent, _ = Geod(ellps="WGS84").polygon_area_perimeter(
        [3.0, 3.03, 3.03, 3.0], [44.0, 44.0, 43.96, 43.96]
    )
    assert census.area_m2[1] + census.area_m2[2] == pytest.approx(abs(extent), rel=1e-6)
    assert census.area_m2[2] > census.area_m2[1]  # the southern half is larger
