"""Kept embeddings end to end: similarity tasks in `run`, `query`, `similar`, `change`, `classify`
against the run's own maps, and the int8 store against the float16 one.

The encoders here are tiny ones whose last layer is fitted (least squares) to labelled pixels, so
that their embeddings separate land covers as a trained encoder's do. A random tiny encoder maps
every pixel to nearly the same direction (mean pairwise cosine 0.999), which no trained model
does, and then int8's 1/127 step alone would decide the classes.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import torch
import yaml
import zarr
from affine import Affine
from pyproj import Transformer

from encoder.checkpoint import load_encoder, save_checkpoint
from encoder.model import TimeSenCLIPEncoder
from encoder.prompts import ClassSpec, TextEncoder, class_prompts
from fixtures.demo import write_demo_inputs
from fixtures.realdata import PATCH, real_patch_composite
from fixtures.stac_server import serve_stac
from fixtures.synthetic import LAND_CLASSES
from fixtures.tiny import tiny_encoder, write_tiny_clip
from pipeline.cli import main
from pipeline.cube.lazy import build_cube
from pipeline.geo.tiles import Tile, region_mask
from pipeline.maps.classify import classify, plan_task
from pipeline.maps.pixel_encoder import embed_series, pixel_series
from pipeline.run.execute import run_workflow
from pipeline.store.embeddings import decode_embeddings, encode_embeddings
from pipeline.workflow.load import WorkflowError, load_workflow, parse_workflow

TEXTS = ["dense forest", "Open water!"]
SLUGS = ["dense_forest", "open_water"]


def fit_head(model, series, present, labels, targets) -> None:
    """Fit the encoder's last linear layer so that pixels of class k embed near ``targets[k]``
    (labels < 0: not used)."""
    head = model.mlp_head[1]
    model.mlp_head[1] = torch.nn.Identity()
    features = embed_series(model, series, present)
    model.mlp_head[1] = head
    keep = (labels >= 0) & np.isfinite(features).all(axis=1)
    design = np.column_stack([features[keep], np.ones(keep.sum())])
    solution, *_ = np.linalg.lstsq(design, targets[labels[keep]], rcond=None)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(solution[:-1].T.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(solution[-1].astype(np.float32)))


def text_embeddings(clip_model: str, texts, templates="class_names") -> np.ndarray:
    text = TextEncoder(model=clip_model, pretrained=None)
    return text.embed_prompts(class_prompts(texts, templates)).numpy()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's inputs, its encoder fitted to the synthetic scene's land classes."""
    root = tmp_path_factory.mktemp("query")
    workflow, synthetic = write_demo_inputs(root)
    model = load_encoder(workflow["model"]["checkpoint"])
    items = [pystac.Item.from_dict(d) for d in synthetic.items]
    cube = build_cube(items, epsg=synthetic.epsg, bounds=synthetic.bounds, year=2023).compute()
    series, present = pixel_series(cube["composite"].values)
    targets = text_embeddings(workflow["model"]["clip"]["model"], list(LAND_CLASSES))
    fit_head(model, series, present, synthetic.land_cover.ravel().astype(int), targets)
    workflow["model"]["checkpoint"] = str(root / "fitted.pt")
    save_checkpoint(model, workflow["model"]["checkpoint"], metadata=model.metadata)
    with serve_stac(synthetic.collection, synthetic.items, root / "data" / "stac") as url:
        workflow["stac"]["url"] = url
        workflow["tasks"].append({"name": "sim", "mode": "similarity", "texts": TEXTS})
        workflow["dask"] = {"n_workers": 1, "threads_per_worker": 2}
        yield root, workflow, synthetic


def run(demo, name: str, embeddings) -> tuple[Path, object]:
    root, workflow, _ = demo
    folder = root / name
    folder.mkdir()
    outputs = {**workflow["outputs"], "dir": str(folder / "maps"), "embeddings": embeddings}
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump({**workflow, "outputs": outputs}, sort_keys=False))
    loaded = load_workflow(path)
    run_workflow(loaded, progress=False)
    return folder / "maps" / "synthetic", loaded


@pytest.fixture(scope="module")
def float16_run(demo):
    return run(demo, "float16", True)


@pytest.fixture(scope="module")
def int8_run(demo):
    return run(demo, "int8", "int8")


@pytest.fixture(scope="module")
def direct(demo, float16_run):
    """Float32 embeddings of the region's grid in one piece, with no tiles, chunks or Dask."""
    _, _, synthetic = demo
    region_dir, workflow = float16_run
    with rasterio.open(region_dir / "land_cover.tif") as src:
        bounds, epsg, shape = tuple(src.bounds), src.crs.to_epsg(), src.shape
        grid = Tile("r", epsg, 0, 0, bounds, shape, src.res[0])
    inside = region_mask(workflow.regions[0].area, grid)
    items = [pystac.Item.from_dict(d) for d in synthetic.items]
    cube = build_cube(items, epsg=epsg, bounds=bounds, year=2023, chunk_size=1024).compute()
    series, present = pixel_series(cube["composite"].values)
    embeddings = embed_series(load_encoder(workflow.model.checkpoint), series, present)
    embeddings[~inside.ravel()] = np.nan
    return embeddings.reshape(*shape, -1)


def text_weights(workflow, texts, templates="class_names") -> np.ndarray:
    return text_embeddings(workflow.model.clip.model, texts, templates)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def as_pixels(cosines: np.ndarray) -> np.ndarray:
    """The documented uint8 rule, written out: round((cosine + 1) * 100), 255 = no data."""
    pixels = np.rint((np.nan_to_num(cosines) + 1.0) * 100.0)
    return np.where(np.isnan(cosines), 255, pixels).astype(np.uint8)


def stored(region_dir: Path) -> np.ndarray:
    """The store's region window decoded by the documented rules, read with zarr alone."""
    zone = zarr.open_group(region_dir / "embeddings.zarr", mode="r")["EPSG32631"]
    row, col, height, width = zone.attrs["region_window"]
    values = zone["embeddings"][row : row + height, col : col + width]
    if values.dtype == np.int8:
        return np.where((values == -128).any(-1, keepdims=True), np.nan, values / 127.0)
    return values.astype(np.float32)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_similarity_task_in_run_equals_a_direct_computation(float16_run, direct):
    region_dir, workflow = float16_run
    expected = as_pixels(unit(direct) @ unit(text_weights(workflow, TEXTS)).T)
    for i, slug in enumerate(SLUGS):
        path = region_dir / f"sim_{slug}.tif"
        got = read(path)
        np.testing.assert_array_equal(got == 255, expected[..., i] == 255)
        diff = np.abs(got.astype(int) - expected[..., i])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float32 rounding at .5 only
        assert len(np.unique(got[got != 255])) > 5
        with rasterio.open(path) as src, rasterio.open(region_dir / "land_cover.tif") as ref:
            assert src.dtypes[0] == "uint8" and src.nodata == 255
            assert (src.scales[0], src.offsets[0]) == (0.01, -1.0)
            assert src.transform == ref.transform and src.shape == ref.shape
            assert src.profile["blockxsize"] == 128 and len(src.overviews(1)) > 0
            assert src.descriptions[0] == f"cosine similarity to {TEXTS[i]!r}"
            assert "255 = no data" in src.tags(1)["LEGEND"]
        qml = ET.parse(path.with_suffix(".qml")).getroot()
        assert qml.find("pipe/rasterrenderer").get("type") == "singlebandpseudocolor"
        stops = [float(e.get("value")) for e in qml.iter("item")]
        assert stops == [-1.0, -0.5, 0.0, 0.5, 1.0]
        item = json.loads(path.with_suffix(".json").read_text())
        band = item["assets"]["data"]["raster:bands"][0]
        assert (band["scale"], band["offset"], band["nodata"]) == (0.01, -1.0, 255)
        assert item["properties"]["timesenclip:text"] == TEXTS[i]
        assert {"data", "valid_months", "style"} <= set(item["assets"])
    record = json.loads((region_dir / "provenance.json").read_text())
    assert record["tasks"][-1]["layers"] == [f"sim_{s}" for s in SLUGS]


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_query_equals_an_independent_computation_from_the_store(
    request, encoding, direct, tmp_path
):
    region_dir, workflow = request.getfixturevalue(f"{encoding}_run")
    out = tmp_path / "q"
    assert main(["query", str(region_dir / "embeddings.zarr"), *TEXTS, "--out", str(out)]) == 0
    weights = unit(text_weights(workflow, TEXTS))
    from_store = as_pixels(unit(stored(region_dir)) @ weights.T)
    exact = as_pixels(unit(direct) @ weights.T)
    # Worst case of the storage: |cos error| <= sqrt(D)/127 for int8, float16's 2**-11 relative.
    dim = weights.shape[1]
    bound = math.ceil(100 * math.sqrt(dim) / 127) + 1 if encoding == "int8" else 1
    for i, slug in enumerate(SLUGS):
        got = read(out / f"{slug}.tif")
        np.testing.assert_array_equal(got == 255, exact[..., i] == 255)
        assert np.abs(got.astype(int) - from_store[..., i]).max() <= 1
        error = np.abs(got.astype(int) - exact[..., i])[got != 255]
        assert error.max() <= bound and error.mean() < 0.5
        # The run's own map of the same text (from float32 embeddings), on the same grid.
        with (
            rasterio.open(out / f"{slug}.tif") as src,
            rasterio.open(region_dir / f"sim_{slug}.tif") as ref,
        ):
            assert src.transform == ref.transform and src.shape == ref.shape
            assert src.profile["blockxsize"] == ref.profile["blockxsize"]
            assert src.overviews(1) == ref.overviews(1)
            assert (src.scales, src.offsets, src.nodata) == (ref.scales, ref.offsets, ref.nodata)
        assert (out / f"{slug}.qml").read_text() == (region_dir / f"sim_{slug}.qml").read_text()


def classify_into(region_dir: Path, out: Path, classes: str = "land_cover") -> None:
    store = str(region_dir / "embeddings.zarr")
    args = ["--classes", classes, "--name", "land_cover", "--out", str(out)]
    assert main(["classify", store, *args]) == 0


def test_classify_writes_what_run_writes(float16_run, tmp_path):
    """Same grid, layout, styles, sidecars and Items as the run's map; pixels differ only at
    near-ties that float16 storage can flip."""
    region_dir, workflow = float16_run
    classify_into(region_dir, tmp_path)
    with (
        rasterio.open(tmp_path / "land_cover.tif") as new,
        rasterio.open(region_dir / "land_cover.tif") as old,
    ):
        for key in ("crs", "transform", "width", "height", "dtype", "nodata", "blockxsize"):
            assert new.profile[key] == old.profile[key], key
        assert new.overviews(1) == old.overviews(1) and new.colormap(1) == old.colormap(1)
        assert new.tags(1) == old.tags(1) and new.descriptions == old.descriptions
        got, want = new.read(1), old.read(1)
    np.testing.assert_array_equal(got == 0, want == 0)
    task = next(t for t in workflow.tasks if t.name == "land_cover")
    weights = unit(text_weights(workflow, task.class_specs(), task.templates))
    cosines = unit(stored(region_dir)) @ weights.T
    rows, cols = np.nonzero(got != want)
    pair = cosines[rows, cols, got[rows, cols] - 1], cosines[rows, cols, want[rows, cols] - 1]
    gap = np.abs(pair[0] - pair[1])
    assert len(rows) <= 0.01 * (want > 0).sum() and (gap < 2e-3).all()
    conf_new, conf_old = (
        read(tmp_path / "land_cover_confidence.tif"),
        read(region_dir / "land_cover_confidence.tif"),
    )
    assert np.abs(conf_new.astype(int) - conf_old).max() <= 1
    for suffix in (".qml", ".tif.aux.xml"):
        name = f"land_cover{suffix}"
        assert (tmp_path / name).read_text() == (region_dir / name).read_text()
    items = [json.loads((d / "land_cover.json").read_text()) for d in (tmp_path, region_dir)]
    for item, folder in zip(items, (tmp_path, region_dir), strict=True):
        del item["properties"]["created"]
        for asset in item["assets"].values():
            asset["href"] = (folder / asset["href"]).resolve().name
            for entry in asset.get("classification:classes", []):
                entry.pop("count"), entry.pop("percentage")
    assert items[0] == items[1]


def test_int8_store_classifies_like_float16(float16_run, int8_run, tmp_path):
    f16_dir, _ = float16_run
    i8_dir, _ = int8_run
    store = zarr.open_group(i8_dir / "embeddings.zarr", mode="r")
    assert store["EPSG32631/embeddings"].dtype == np.int8 and store.attrs["encoding"] == "int8"
    for name, folder in (("f16", f16_dir), ("i8", i8_dir)):
        classify_into(folder, tmp_path / name)
    a, b = read(tmp_path / "f16" / "land_cover.tif"), read(tmp_path / "i8" / "land_cover.tif")
    np.testing.assert_array_equal(a == 0, b == 0)
    valid = a > 0
    counts = np.bincount(a[valid])
    assert (counts > 0.05 * valid.sum()).sum() >= 2  # a map with classes to disagree on
    assert (a == b)[valid].mean() >= 0.99


def test_int8_classifies_like_float16_on_the_real_patch(realdata, tmp_path):
    """Real Sentinel-2 pixels of the eo-learn patch (cloudy dates masked), its land-cover labels."""
    folder = realdata / PATCH
    composite = real_patch_composite(realdata)
    series, present = pixel_series(composite)
    lulc = np.load(folder / "TestEOPatch" / "mask_timeless" / "LULC.npy").ravel()
    names = {1: "cultivated land", 2: "forest", 3: "grassland", 4: "shrubland", 8: "artificial"}
    labels = np.full(lulc.shape, -1)
    for index, code in enumerate(names):
        labels[lulc == code] = index
    clip = f"local-dir:{write_tiny_clip(tmp_path / 'clip', embed_dim=32)}"
    model = tiny_encoder(32)
    fit_head(model, series, present, labels, text_embeddings(clip, list(names.values())))
    embeddings = embed_series(model, series, present)
    classes = [ClassSpec(n) for n in names.values()]
    task = plan_task("lulc", classes, "class_names", TextEncoder(clip, None))
    maps = {}
    for encoding in ("float16", "int8"):
        kept = decode_embeddings(encode_embeddings(embeddings, encoding), encoding)
        maps[encoding] = classify(kept, task)[0]
    counts = np.bincount(maps["float16"])
    assert (counts > 0.05 * len(labels)).sum() >= 2
    assert (maps["float16"] - 1 == labels)[labels >= 0].mean() > 0.8  # it maps the patch
    assert (maps["int8"] == maps["float16"]).mean() >= 0.99


def store_of(region_dir: Path) -> str:
    return str(region_dir / "embeddings.zarr")


def test_contrast_and_float16(float16_run, tmp_path, monkeypatch):
    region_dir, workflow = float16_run

    def no_encoder_pass(*args, **kwargs):
        raise AssertionError("a query ran the encoder")

    monkeypatch.setattr(TimeSenCLIPEncoder, "forward", no_encoder_pass)
    cos = (unit(stored(region_dir)) @ unit(text_weights(workflow, TEXTS[:1])).T)[..., 0]
    low, high = np.percentile(cos[np.isfinite(cos)], [2, 98])
    for flags in ([], ["--contrast"], ["--float16"], ["--float16", "--contrast"]):
        out = tmp_path / "-".join(flags or ["plain"])
        assert main(["query", store_of(region_dir), TEXTS[0], "--out", str(out), *flags]) == 0
        path = out / f"{SLUGS[0]}.tif"
        with rasterio.open(path) as src:
            got, scale, offset, nodata = src.read(1), src.scales[0], src.offsets[0], src.nodata
            nbits = src.tags(1, "IMAGE_STRUCTURE").get("NBITS")
        stops = [float(e.get("value")) for e in ET.parse(path.with_suffix(".qml")).iter("item")]
        ramp = (low, high) if "--contrast" in flags else (-1.0, 1.0)
        np.testing.assert_allclose([stops[0], stops[-1]], ramp, rtol=1e-5)
        if "--float16" in flags:  # the cosine itself, half precision; contrast stretches colours
            assert nbits == "16" and math.isnan(nodata) and (scale, offset) == (1.0, 0.0)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(cos))
            np.testing.assert_allclose(got, cos.astype(np.float16), atol=1e-3)
            continue
        assert nbits is None and nodata == 255
        span = np.clip((cos - ramp[0]) / (ramp[1] - ramp[0]) * 200, 0, 200)
        expected = np.where(np.isnan(cos), 255, np.rint(span))
        assert np.abs(got.astype(int) - expected).max() <= 1
        np.testing.assert_allclose((scale, offset), ((ramp[1] - ramp[0]) / 200, ramp[0]), rtol=1e-5)
        if "--contrast" in flags:
            valid = got[got != 255]
            # At least the 2 % beyond each percentile sit at the ends; most lie between them.
            assert (valid == 0).mean() >= 0.015 and (valid == 200).mean() >= 0.015
            assert ((valid > 0) & (valid < 200)).mean() > 0.5
            assert (
                "2nd-98th percentile"
                in json.loads(path.with_suffix(".json").read_text())["properties"]["description"]
            )


def pixel_lonlat(region_dir: Path, row: float, col: float) -> tuple[float, float]:
    with rasterio.open(region_dir / "land_cover.tif") as src:
        x, y = src.transform * (col, row)
        to_lonlat = Transformer.from_crs(src.crs, 4326, always_xy=True)
    return to_lonlat.transform(x, y)


def test_similar_to_a_point_and_to_exemplar_features(float16_run, tmp_path):
    region_dir, _ = float16_run
    embeddings = unit(stored(region_dir))
    lon, lat = pixel_lonlat(region_dir, 40.5, 50.5)
    args = ["similar", store_of(region_dir), "--out", str(tmp_path)]
    assert main([*args, "--point", f"{lon},{lat}", "--name", "one point"]) == 0
    got = read(tmp_path / "one_point.tif")
    assert got[40, 50] == 200  # the exemplar itself: cosine 1
    assert np.abs(got.astype(int) - as_pixels(embeddings @ embeddings[40, 50])).max() <= 1

    corners = [
        pixel_lonlat(region_dir, r, c) for r, c in ((100, 20), (100, 23), (97, 23), (97, 20))
    ]
    features = [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {
                "type": "Point",
                "coordinates": list(pixel_lonlat(region_dir, 10.5, 120.5)),
            },
        },
        {
            "type": "Feature",
            "properties": {},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[*map(list, corners), list(corners[0])]],
            },
        },
    ]
    geojson = tmp_path / "exemplars.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert main([*args, "--geojson", str(geojson)]) == 0
    pixels = np.concatenate(
        [embeddings[10:11, 120], embeddings[97:100, 20:23].reshape(-1, embeddings.shape[-1])]
    )
    target = unit(unit(pixels).mean(axis=0))
    got = read(tmp_path / "similar_exemplars.tif")
    assert np.abs(got.astype(int) - as_pixels(embeddings @ target)).max() <= 1
    item = json.loads((tmp_path / "similar_exemplars.json").read_text())
    assert item["properties"]["timesenclip:exemplar"] == {
        "geojson": "exemplars.geojson",
        "pixels": 10,
    }


def copy_store(region_dir: Path, folder: Path) -> tuple[Path, zarr.Group]:
    path = folder / "embeddings.zarr"
    shutil.copytree(region_dir / "embeddings.zarr", path)
    return path, zarr.open_group(path, mode="r+")


def test_change_between_two_years(float16_run, tmp_path):
    region_dir, _ = float16_run
    later, group = copy_store(region_dir, tmp_path / "2024")
    group.attrs["year"] = 2024
    array = group["EPSG32631/embeddings"]
    row, col, _, _ = group["EPSG32631"].attrs["region_window"]
    block = (slice(row + 20, row + 60), slice(col + 30, col + 70))
    array[block] = array[row + 100 : row + 140, col + 100 : col + 140]  # now built-up there
    assert main(["change", store_of(region_dir), str(later), "--out", str(tmp_path / "out")]) == 0
    path = tmp_path / "out" / "change_2023_2024.tif"
    first, second = unit(stored(region_dir)), unit(stored(tmp_path / "2024"))
    expected = 1.0 - (first * second).sum(axis=-1)
    got = read(path)
    np.testing.assert_array_equal(got == 255, np.isnan(expected))
    pixels = np.where(np.isnan(expected), 255, np.rint(np.nan_to_num(expected) * 100))
    assert np.abs(got.astype(int) - pixels).max() <= 1
    unchanged = np.ones(got.shape, bool)
    unchanged[20:60, 30:70] = False
    assert (got[unchanged & (got != 255)] == 0).all() and got[~unchanged].max() > 5
    with rasterio.open(path) as src:
        assert (src.scales[0], src.offsets[0]) == (0.01, 0.0)
    item = json.loads(path.with_suffix(".json").read_text())["properties"]
    assert (item["start_datetime"][:4], item["end_datetime"][:4]) == ("2023", "2024")


def _other_clip(region_dir, tmp_path):
    clip = write_tiny_clip(tmp_path / "other-clip", embed_dim=32, seed=1)
    return ["query", store_of(region_dir), "water", "--clip-model", f"local-dir:{clip}"]


def _outside_feature(region_dir, tmp_path):
    path = tmp_path / "far.geojson"
    path.write_text(json.dumps({"type": "Point", "coordinates": [10.0, 50.0]}))
    return ["similar", store_of(region_dir), "--geojson", str(path)]


def _changed_store(change):
    def args(region_dir, tmp_path):
        path, group = copy_store(region_dir, tmp_path)
        change(group)
        return ["change", store_of(region_dir), str(path)]

    return args


def _store_of_format(change):
    def args(region_dir, tmp_path):
        path, group = copy_store(region_dir, tmp_path)
        change(group.attrs)
        return ["query", str(path), "water"]

    return args


def _shrink(group):
    zone = group["EPSG32631"]
    row, col, height, width = zone.attrs["region_window"]
    zone.attrs["region_window"] = [row, col, height - 1, width]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, t: ["query", str(t / "missing.zarr"), "water"], "is not an embeddings store"),
        (_other_clip, "another text model gives meaningless scores"),
        (lambda d, t: ["similar", store_of(d), "--point", "10,50"], "lies outside"),
        (_outside_feature, "covers no pixel with an embedding"),
        (
            lambda d, t: ["query", store_of(d), "open water", "Open-Water"],
            "both give the file name",
        ),
        (_changed_store(_shrink), "different grids"),
        (_changed_store(lambda g: g.attrs.update(checkpoint_sha256="0" * 64)), "different encoder"),
        (_store_of_format(lambda a: a.update(format="timesenclip-embeddings-v1")), "older"),
        (_store_of_format(lambda a: a.pop("format")), "no timesenclip embeddings store"),
    ],
)
def test_bad_inputs_fail_clearly(float16_run, tmp_path, capsys, make_args, message):
    region_dir, _ = float16_run
    assert main([*make_args(region_dir, tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_workflow_similarity_tasks_and_encodings(demo, tmp_path):
    _, workflow, _ = demo

    def parse(**changes):
        return parse_workflow({**workflow, **changes}, base_dir=tmp_path)

    parsed = parse(outputs={**workflow["outputs"], "embeddings": "int8"})
    assert parsed.outputs.embeddings == "int8" and parsed.tasks[-1].mode == "similarity"
    assert (
        parse(outputs={**workflow["outputs"], "embeddings": True}).outputs.embeddings == "float16"
    )
    assert "similarity to 2 text(s)" in parsed.summary()
    bad = [
        ({"outputs": {**workflow["outputs"], "embeddings": "int4"}}, "'float16' or 'int8'"),
        ({"tasks": [{"name": "s", "mode": "similarity"}]}, "needs texts"),
        ({"tasks": [{"name": "s", "classes": "land_cover", "texts": ["a"]}]}, "no texts"),
        ({"tasks": [{"name": "s", "mode": "similarity", "texts": ["a b", "A-B"]}]}, "both give"),
        (
            {
                "tasks": [
                    {"name": "a_b", "classes": "land_cover"},
                    {"name": "a", "mode": "similarity", "texts": ["b"]},
                ]
            },
            "a_b.tif",
        ),
    ]
    for changes, message in bad:
        with pytest.raises(WorkflowError, match=re.escape(message)):
            parse(**changes)


def test_store_records_model_grid_and_encoding(float16_run):
    region_dir, workflow = float16_run
    store = zarr.open_group(region_dir / "embeddings.zarr", mode="r")
    record = json.loads((region_dir / "provenance.json").read_text())
    attrs = store.attrs
    assert attrs["encoding"] == "float16" and attrs["dim"] == 32 and attrs["year"] == 2023
    assert attrs["checkpoint_sha256"] == record["checkpoint_sha256"]
    assert attrs["clip_model"] == workflow.model.clip.model
    assert attrs["clip_weights"] == TextEncoder(workflow.model.clip.model, None).weights_id()
    assert attrs["layout"] == {"blocksize": 128, "overview_resampling": "mode", "confidence": True}
    zone = store["EPSG32631"]
    array = zone["embeddings"]
    row, col, height, width = zone.attrs["region_window"]
    origin = Affine(*zone.attrs["transform"]) * (col, row)
    with rasterio.open(region_dir / "land_cover.tif") as src:
        assert origin == (src.transform.c, src.transform.f) and (height, width) == src.shape
    assert [t["id"] for t in zone.attrs["tiles"]] == [t["id"] for t in record["tiles"]]
    assert array.shape[0] % 64 == 0 and array.chunks == (64, 64, 32)  # whole chunks per writer
