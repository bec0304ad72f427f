"""The Python face (``import timesenclip``) against a real run on the same scenes and grid.

One small run of the offline demo inputs (a classes task with the built-in land cover, one with
the demo's own coloured classes, a similarity task, embeddings kept) is the reference: a
``stackstac.stack`` of the same items through ``monthly_composites``, ``embed``, ``classify`` and
``similarity`` must give its composites and maps, ``to_cog`` its files, and the kept store must
open in xarray, through ``open_embeddings`` and ``xr.open_zarr`` alike.
"""

from __future__ import annotations

import datetime
import json
import pydoc
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import stackstac
import xarray as xr
import zarr

import timesenclip
from fixtures.demo import write_demo_inputs
from fixtures.stac_server import serve_stac
from fixtures.synthetic import SyntheticCollection
from fixtures.tiny import write_tiny_clip
from pipeline.cli import main
from pipeline.cube.lazy import build_cube
from pipeline.maps.cog import read_category_names
from pipeline.run.execute import run_workflow
from pipeline.store.embeddings import open_store
from pipeline.workflow.load import load_workflow
from timesenclip import TimeSenCLIPError

DATES = [datetime.date(2023, month, 5) for month in (1, 3, 4, 6, 7, 9, 11)]
TEXTS = ["dense forest"]
PUBLIC = ("monthly_composites", "embed", "classify", "similarity", "to_cog", "open_embeddings")


@dataclass(frozen=True)
class Run:
    workflow: dict
    synthetic: SyntheticCollection
    region: Path  # the region's folder of maps
    epsg: int
    bounds: tuple[float, float, float, float]
    inside: np.ndarray  # pixels of the map inside the region


@pytest.fixture(scope="module")
def run(tmp_path_factory, workflow_file) -> Run:
    root = tmp_path_factory.mktemp("api")
    workflow, synthetic = write_demo_inputs(root, shape=(64, 64), dates=DATES)
    workflow["tasks"].append({"name": "sim", "mode": "similarity", "texts": TEXTS})
    workflow["outputs"]["embeddings"] = "float16"
    workflow["dask"] = {"n_workers": 1, "threads_per_worker": 1}
    with serve_stac(synthetic.collection, synthetic.items, root / "data" / "stac") as url:
        workflow["stac"]["url"] = url
        run_workflow(load_workflow(workflow_file(root / "run", workflow)), progress=False)
    region = root / "out" / "synthetic"
    with rasterio.open(region / "valid_months.tif") as src:
        inside = src.read(1) != 255
        epsg, bounds = src.crs.to_epsg(), tuple(src.bounds)
    return Run(workflow, synthetic, region, epsg, bounds, inside)


@pytest.fixture(scope="module")
def face(run):
    """The face's lazy chain over a stackstac stack of the run's items on its map grid."""
    stack = stackstac.stack(
        run.synthetic.items,
        epsg=run.epsg,
        bounds=run.bounds,
        resolution=10,
        rescale=False,
        xy_coords="center",
        chunksize=32,
    )
    composites = timesenclip.monthly_composites(stack)
    embeddings = timesenclip.embed(
        composites, checkpoint=run.workflow["model"]["checkpoint"], device="cpu"
    )
    maps = xr.merge(
        [
            timesenclip.classify(embeddings, "land_cover"),
            timesenclip.classify(embeddings, run.workflow["tasks"][1]["classes"], name="custom"),
            timesenclip.similarity(embeddings, TEXTS, name="sim"),
        ],
        compat="no_conflicts",
        join="exact",
        combine_attrs="drop_conflicts",
    )
    return composites, embeddings, maps


@pytest.fixture(scope="module")
def computed(face):
    return tuple(part.compute() for part in face)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_composites_of_a_stackstac_stack_are_the_runs_readers(run, face, computed):
    composites, _, _ = face
    assert dask.is_dask_collection(composites["composite"].data)
    got = computed[0]
    reader = timesenclip.monthly_composites(
        run.synthetic.items, bounds=run.bounds, crs=f"EPSG:{run.epsg}", year=2023
    ).compute()
    assert reader.identical(build_cube(run.synthetic.items, epsg=run.epsg, bounds=run.bounds,
                                       year=2023).compute())  # fmt: skip
    np.testing.assert_array_equal(got["composite"].values, reader["composite"].values)
    np.testing.assert_array_equal(got["valid_months"].values, reader["valid_months"].values)
    assert got.sizes == {"month": 12, "band": 10, "y": 60, "x": 60}
    assert got.rio.crs.to_epsg() == run.epsg and got.rio.transform() == reader.rio.transform()
    assert np.isfinite(got["composite"].values).mean() > 0.2
    assert [r["offset"] for r in got.attrs["harmonization"]] == [0] * len(DATES)
    assert all("boa_offset_applied true" in r["rule"] for r in got.attrs["harmonization"])
    run_valid = read(run.region / "valid_months.tif")
    np.testing.assert_array_equal(got["valid_months"].values[run.inside], run_valid[run.inside])


def test_classify_and_similarity_give_the_runs_maps(run, face, computed):
    _, embeddings, maps = face
    assert dask.is_dask_collection(embeddings["embeddings"].data)
    assert dask.is_dask_collection(maps["land_cover"].data)
    got = computed[2]
    for name in ("land_cover", "land_cover_confidence", "custom", "custom_confidence"):
        expected = read(run.region / f"{name}.tif")
        np.testing.assert_array_equal(got[name].values[run.inside], expected[run.inside])
        assert got[name].dtype == np.uint8
    sim = read(run.region / "sim_dense_forest.tif")
    np.testing.assert_array_equal(got["sim_dense_forest"].values[run.inside], sim[run.inside])
    assert len(np.unique(got["land_cover"].values[run.inside])) > 1
    assert (got["land_cover"].values[~run.inside] > 0).all()  # the face maps all it is given
    for task in ("land_cover", "custom"):
        names = read_category_names(run.region / f"{task}.tif")[1:]
        assert got[task].attrs["class_names"] == names
        assert got[task].attrs["flag_values"] == list(range(1, len(names) + 1))
        with rasterio.open(run.region / f"{task}.tif") as src:
            colors = ["#{:02x}{:02x}{:02x}".format(*src.colormap(1)[v][:3]) for v in range(1, 5)]
        assert got[task].attrs["class_colors"][:4] == colors
    assert [c["color"] for c in run.workflow["tasks"][1]["classes"]] == colors
    cosine = xr.decode_cf(got)["sim_dense_forest"].values
    np.testing.assert_allclose(cosine[run.inside], sim[run.inside] / 100 - 1, atol=1e-6)
    assert got.rio.crs.to_epsg() == run.epsg


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")  # xarray consolidates
def test_composites_embeddings_and_maps_keep_in_zarr(computed, tmp_path):
    for i, result in enumerate(computed):
        result.to_zarr(tmp_path / f"{i}.zarr")
        back = xr.open_zarr(tmp_path / f"{i}.zarr", decode_coords="all", mask_and_scale=False)
        for name in result.data_vars:
            np.testing.assert_array_equal(back[name].values, result[name].values, strict=True)
        assert back.rio.crs == result.rio.crs and back.rio.transform() == result.rio.transform()
        assert back.attrs == result.attrs
    assert back["land_cover"].attrs["class_names"] == computed[2]["land_cover"].attrs["class_names"]


def _outside_as_nodata(maps: xr.Dataset, inside: np.ndarray) -> xr.Dataset:
    """The maps as a run keeps them: nodata outside the region."""
    out = maps.copy()
    for name, layer in maps.data_vars.items():
        nodata = layer.attrs.get("_FillValue", 255)
        out[name] = layer.copy(data=np.where(inside, layer.values, nodata).astype(np.uint8))
    return out


def _item(path: Path) -> dict:
    """A map's STAC Item without what differs between two writes of the same map: when, the
    run's note of skipped reads, and the folder of a file it lists."""
    item = json.loads(path.read_text())
    for key in ["created", *(k for k in item["properties"] if k.startswith("timesenclip:skip"))]:
        item["properties"].pop(key)
    for asset in item["assets"].values():
        asset["href"] = Path(asset["href"]).name
    return item


def assert_same_files(ours: Path, theirs: Path, names: list[str]) -> None:
    for name in names:
        a, b = ours / name, theirs / name
        if name.endswith(".tif"):
            with rasterio.open(a) as x, rasterio.open(b) as y:
                assert x.profile == y.profile and x.tags() == y.tags() and x.tags(1) == y.tags(1)
                assert x.overviews(1) == y.overviews(1)
                for level in (1, *x.overviews(1)):
                    shape = (x.height // level, x.width // level)
                    np.testing.assert_array_equal(
                        x.read(1, out_shape=shape), y.read(1, out_shape=shape), err_msg=name
                    )
                if x.dtypes[0] == "uint8" and x.colorinterp[0].name == "palette":
                    assert x.colormap(1) == y.colormap(1)
        elif name.endswith(".json"):
            assert _item(a) == _item(b), name
        else:
            assert a.read_text() == b.read_text(), name


def test_to_cog_writes_the_files_run_writes(run, computed, tmp_path):
    maps = _outside_as_nodata(computed[2], run.inside)
    written = timesenclip.to_cog(maps, tmp_path, blocksize=128)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in written) == names
    assert set(names) == {
        p.name for p in run.region.iterdir() if p.name not in ("embeddings.zarr", "provenance.json")
    }
    assert_same_files(tmp_path, run.region, names)
    one = timesenclip.to_cog(maps["custom"], tmp_path / "single" / "mine.tif")
    assert sorted(p.name for p in one) == ["mine.json", "mine.qml", "mine.tif", "mine.tif.aux.xml"]
    item = json.loads((tmp_path / "single" / "mine.json").read_text())
    assert set(item["assets"]) == {"data", "style", "aux_xml"}
    assert item["properties"]["title"] == "custom 2023"
    classes = item["assets"]["data"]["classification:classes"]
    assert [c["title"] for c in classes[1:]] == maps["custom"].attrs["class_names"]


def test_the_kept_store_opens_in_xarray(run, computed):
    store = run.region / "embeddings.zarr"
    kept = timesenclip.open_embeddings(store)
    assert dask.is_dask_collection(kept["embeddings"].data)
    with rasterio.open(run.region / "land_cover.tif") as src:
        transform, shape = src.transform, src.shape
    assert kept["embeddings"].dims == ("y", "x", "dim") and kept.sizes["dim"] == 32
    assert (kept.sizes["y"], kept.sizes["x"]) == shape and kept.rio.transform() == transform
    np.testing.assert_array_equal(kept["x"].values, computed[0]["x"].values)
    np.testing.assert_array_equal(kept["y"].values, computed[0]["y"].values)
    assert kept.rio.crs.to_epsg() == run.epsg and kept.attrs["year"] == 2023
    assert kept.attrs["clip_model"] == run.workflow["model"]["clip"]["model"]
    np.testing.assert_array_equal(kept["valid_months"], read(run.region / "valid_months.tif"))
    values = kept["embeddings"].values
    zone = open_store(store).zones[0]
    np.testing.assert_array_equal(values, zone.read(0, 0, *zone.shape), strict=True)
    # The face's embeddings of the stack are the run's, as float16 keeps them.
    ours = computed[1]["embeddings"].values.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ours[run.inside], values[run.inside])
    assert np.isnan(values[~run.inside]).all() and np.isfinite(values[run.inside]).any()

    # Plain xarray: the zone's whole array (its chunk-aligned margin included), CRS, attributes.
    opened = xr.open_zarr(store, group="EPSG32631")
    root = json.loads((store / "zarr.json").read_text())
    assert "consolidated_metadata" in root  # what xr.open_zarr read, in one request
    assert list(opened.data_vars) == ["embeddings"] and "spatial_ref" in opened.coords
    assert opened["embeddings"].dims == ("y", "x", "dim") and opened.chunks["y"][0] == 64
    assert opened.rio.crs.to_epsg() == run.epsg
    assert opened.attrs["year"] == 2023 and opened.attrs["format"] == "timesenclip-embeddings-v3"
    row, col, height, width = opened.attrs["region_window"]
    window = opened.isel(y=slice(row, row + height), x=slice(col, col + width))
    np.testing.assert_array_equal(window["x"].values, kept["x"].values)
    np.testing.assert_array_equal(window["embeddings"].values.astype(np.float32), values)
    assert opened.rio.transform() * (col, row) == (transform.c, transform.f)


def test_maps_from_the_kept_store_are_the_classify_verbs(run, tmp_path):
    store = run.region / "embeddings.zarr"
    classes = "forest,cropland,water,built-up area"
    assert main(["classify", str(store), "--classes", classes, "--name", "mine",
                 "--out", str(tmp_path / "verb")]) == 0  # fmt: skip
    maps = timesenclip.classify(timesenclip.open_embeddings(store), classes.split(","), name="mine")
    timesenclip.to_cog(maps, tmp_path / "face")
    assert_same_files(tmp_path / "face", tmp_path / "verb", ["mine.tif", "mine.qml", "mine.json",
                      "mine_confidence.tif", "mine_confidence.qml"])  # fmt: skip
    assert read_category_names(tmp_path / "face" / "mine.tif")[1:] == classes.split(",")


def test_the_face_runs_on_a_distributed_client(face, computed):
    from distributed import Client, LocalCluster

    # Threads of this process: the client still pickles the graph for the scheduler, and the
    # worker runs its tasks, without the seconds a worker process takes to start.
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
        as cluster,
        Client(cluster),
    ):  # fmt: skip
        composites, embeddings, maps = dask.compute(*face)
    assert composites.identical(computed[0]) and embeddings.identical(computed[1])
    assert maps.identical(computed[2])


def test_nothing_is_read_until_asked(run, tmp_path):
    """Scenes whose files are gone still give every lazy object; computing then reads them."""
    items = json.loads(json.dumps(run.synthetic.items))
    for item in items:
        for asset in item["assets"].values():
            asset["href"] = str(tmp_path / "gone" / Path(asset["href"]).name)
    stack = stackstac.stack(
        items, epsg=run.epsg, bounds=run.bounds, resolution=10, rescale=False, xy_coords="center"
    )
    embeddings = timesenclip.embed(
        timesenclip.monthly_composites(stack),
        checkpoint=run.workflow["model"]["checkpoint"],
        device="cpu",
    )
    maps = timesenclip.classify(embeddings, "land_cover")
    with pytest.raises(RuntimeError, match="gone"):
        maps["land_cover"].compute()


def test_bad_input_raises_one_error_naming_what_to_pass(run, face, tmp_path):
    composites, embeddings, _ = face
    stack = stackstac.stack(run.synthetic.items, epsg=run.epsg, resolution=10, rescale=False)
    (tmp_path / "other.zarr").mkdir()
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["title"] = "another store"
    checkpoint = run.workflow["model"]["checkpoint"]
    other_clip = f"local-dir:{write_tiny_clip(tmp_path / 'clip', embed_dim=16)}"
    cases = [
        (lambda: timesenclip.monthly_composites(stack.drop_sel(band="scl")), "lacks 'scl'"),
        (lambda: timesenclip.monthly_composites(stack.drop_sel(band="nir")), "lacks 'nir'"),
        (lambda: timesenclip.monthly_composites(stack, year=2019), "no scene of 2019"),
        (lambda: timesenclip.monthly_composites(stack, bounds=run.bounds), "stack's own"),
        (lambda: timesenclip.monthly_composites(run.synthetic.items, year=2023), "bounds="),
        (
            lambda: timesenclip.monthly_composites(
                run.synthetic.items, bounds=run.bounds, crs=run.epsg, year=2019
            ),
            "no usable Sentinel-2 item for 2019",
        ),
        (lambda: timesenclip.monthly_composites("items.json"), "or STAC items"),
        (lambda: timesenclip.embed(stack, checkpoint=checkpoint), "monthly_composites returns"),
        (
            lambda: timesenclip.embed(composites, checkpoint=checkpoint, runtime="tensorrt"),
            "runtime 'tensorrt' with precision 'fp32' is not known",
        ),
        (lambda: timesenclip.classify(composites), "embed or open_embeddings returns"),
        (lambda: timesenclip.classify(embeddings, "no such set"), "unknown class set"),
        (lambda: timesenclip.classify(embeddings, clip_model=other_clip), "pass clip_model="),
        (lambda: timesenclip.open_embeddings(tmp_path / "other.zarr"), "records no format"),
        (lambda: timesenclip.open_embeddings(tmp_path / "none.zarr"), "not an embeddings store"),
        (lambda: timesenclip.open_embeddings(run.region / "embeddings.zarr", "EPSG32632"), "zone="),
        (lambda: timesenclip.to_cog(composites, tmp_path / "x"), "not one classify or similarity"),
    ]
    for call, message in cases:
        with pytest.raises(TimeSenCLIPError, match=message):
            call()
    assert not (tmp_path / "x").exists()


def test_import_loads_nothing_heavy_and_the_reference_renders():
    heavy = ["torch", "dask", "open_clip", "xarray", "zarr", "rasterio", "stackstac", "pipeline"]
    code = f"import sys, timesenclip; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    doc = pydoc.plain(pydoc.render_doc(timesenclip))  # what ``python -m pydoc timesenclip`` prints
    for name in PUBLIC:
        function = getattr(timesenclip, name)
        assert f"{name}(" in doc and function.__doc__.splitlines()[0] in doc, name
    assert "TimeSenCLIPError" in doc and sorted(timesenclip.__all__) == sorted(
        [*PUBLIC, "TimeSenCLIPError", "__version__"]
    )
