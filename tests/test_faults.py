"""Faults and bad input on real loopback servers: retried reads, honest skips, checked inputs.

The file server serves the synthetic COGs over HTTP with Range support and injects 503s,
connection resets and truncated bodies; a local STAC API serves items whose hrefs point to it, and
a flaky proxy in front of it injects 503s and resets into the searches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from fixtures.demo import write_demo_inputs
from fixtures.file_server import serve_files
from fixtures.stac_proxy import serve_stac_proxy
from fixtures.stac_server import serve_stac
from fixtures.synthetic import write_synthetic_collection
from pipeline.cube.read_retry import ReadRetry, is_retryable, is_transient
from pipeline.cube.reader import GDAL_OPTIONS, read_scenes
from pipeline.geo.grid import Grid
from pipeline.plan.scenes import RegionTarget, make_plan
from pipeline.run.execute import run_workflow
from pipeline.search.items import BadAssetError, HrefNotAllowedError, check_hrefs, item_ref
from pipeline.workflow.load import load_workflow

DATES = [date(2023, month, 15) for month in (3, 6, 8, 10)]
EXTRA = "extra"  # a small collection over one tile only, so faults can be aimed at that tile


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Demo inputs with 4 dates, plus one scene covering only the south-east tile."""
    root = tmp_path_factory.mktemp("faults")
    workflow, synthetic = write_demo_inputs(root, dates=DATES)
    extra = write_synthetic_collection(
        root / "data" / EXTRA,
        origin=(501800.0, 4799900.0),
        shape=(48, 48),
        dates=[date(2023, 7, 2)],
        seed=3,
    )
    workflow["cube"] = {**workflow["cube"], "chunk_size": 128}  # one chunk per tile
    workflow["outputs"] = {**workflow["outputs"], "embeddings": False}
    return root, workflow, synthetic.collection, synthetic.items + extra.items


@contextlib.contextmanager
def served(inputs, workdir: Path, **faults):
    """``(file server, STAC API url)``: the scenes over HTTP, their items over a STAC API."""
    root, _, collection, items = inputs
    with serve_files(root / "data", **faults) as files:
        api_items = [files.served_item(item) for item in items]
        with serve_stac(collection, api_items, workdir / "api") as url:
            yield files, url


def run(inputs, workflow_file, folder: Path, url: str, stac: dict | None = None, **cube):
    """Run the workflow on ``url`` into ``folder``: (summary, region folder)."""
    _, workflow, _, _ = inputs
    path = workflow_file(
        folder,
        workflow,
        stac={**workflow["stac"], "url": url, **(stac or {})},
        cube={**workflow["cube"], **cube},
        outputs={**workflow["outputs"], "dir": str(folder / "maps")},
    )
    return run_workflow(load_workflow(path), progress=False), folder / "maps" / "synthetic"


def map_digests(region: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in region.glob("*.tif")}


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory, workflow_file):
    """The maps of a run on a server that never fails."""
    folder = tmp_path_factory.mktemp("clean")
    with served(inputs, folder) as (_, url):
        _, region = run(inputs, workflow_file, folder, url)
    return map_digests(region)


# --- 1. reads are retried ---------------------------------------------------------------------


def test_a_flaky_file_server_gives_the_clean_maps(inputs, clean, tmp_path, workflow_file):
    """30 % of requests fail (503, reset, cut body); default settings still give the same maps."""
    with served(inputs, tmp_path, fault_rate=0.3, seed=7) as (files, url):
        summary, region = run(inputs, workflow_file, tmp_path, url)
    assert set(files.injected) == {"503", "reset", "truncate"}
    assert map_digests(region) == clean and len(clean) >= 4
    record = json.loads((region / "provenance.json").read_text())
    assert all(tile["skipped"] == [] for tile in record["tiles"])
    assert record["tiles_to_retry"] == [] and summary.skipped_assets == 0


def plan_tiles(inputs, workflow_file, folder: Path, url: str, **stac) -> dict[str, list[str]]:
    """The items the planner gives each tile when searching ``url``."""
    _, workflow, _, _ = inputs
    path = workflow_file(folder, workflow, stac={**workflow["stac"], "url": url, **stac})
    loaded = load_workflow(path)
    targets = [RegionTarget(r, folder / r.name, Path(), "") for r in loaded.regions]
    plan = make_plan(loaded, targets)
    return {
        t.tile.id: sorted(plan.refs[i].id for i in t.items)
        for region in plan.regions
        for t in region.tiles
    }


def test_a_flaky_stac_api_gives_the_same_plan(inputs, tmp_path, workflow_file):
    """30 % of STAC requests fail (503, reset) at a proxy; retried, every tile gets the same items
    (bench/faults.py runs the whole workflow through it and compares the maps)."""
    with served(inputs, tmp_path) as (_, url):
        direct = plan_tiles(inputs, workflow_file, tmp_path / "direct", url)
        with serve_stac_proxy(url, fault_rate=0.3, seed=5) as proxy:
            # 0.3 ** 9: no request is expected to fail every attempt
            proxied = plan_tiles(inputs, workflow_file, tmp_path / "proxy", proxy.url, retries=8)
    assert proxied == direct and len(direct) == 4
    assert sum(proxy.injected.values()) > 0 and set(proxy.injected) <= {"503", "reset"}
    assert proxy.counts["/search"] >= 4  # the searches went through it, not only the landing page


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two small dates on disk, their item dicts and the grid they share."""
    root = tmp_path_factory.mktemp("scenes")
    synthetic = write_synthetic_collection(root, shape=(32, 32), dates=DATES[:2])
    return root, synthetic.items, Grid(synthetic.epsg, synthetic.bounds, 10.0)


@pytest.fixture
def gdal_env(monkeypatch):
    """The run's GDAL settings for cloud reads (workers get them from the chunk settings)."""
    for key, value in GDAL_OPTIONS.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def read(refs, grid, **options):
    return read_scenes(refs, grid, resampling_of=lambda band: Resampling.nearest, **options)


def test_cut_bodies_are_read_again_with_the_cache_cleared(scenes, gdal_env):
    """GDAL does not retry a truncated body itself; the retry must not reread cached bad bytes."""
    root, items, grid = scenes
    want = read([item_ref(i) for i in items], grid)
    with serve_files(root, fault_rate=0.4, faults=["truncate"], seed=2) as files:
        refs = [item_ref(files.served_item(i)) for i in items]
        got = read(refs, grid, retry=ReadRetry(retries=8, backoff=0.0))
    assert files.injected["truncate"] > 0 and not got.skipped
    for band, values in want.layers.items():
        np.testing.assert_array_equal(got.layers[band], values)


@pytest.mark.parametrize(
    ("href", "text", "retried", "transient"),
    [
        (
            "http://h/B02.tif",
            "'/vsicurl/http://h/B02.tif' not recognized as being in a supported file format.",
            True,
            False,
        ),
        (
            "http://h/B02.tif",
            "HTTP response code: 404 <- '/vsicurl/http://h/B02.tif' not "
            "recognized as being in a supported file format.",
            False,
            False,
        ),
        (
            "/data/B02.tif",
            "'/data/B02.tif' not recognized as being in a supported file format.",
            False,
            False,
        ),
        ("http://h/B02.tif", "HTTP response code: 503", True, True),
    ],
)
def test_an_unrecognised_remote_file_is_read_again_but_never_left_to_a_rerun(
    href, text, retried, transient
):
    """A header cut short reads as "not recognized": read it again now, but a file that stays
    so is no raster, so the tile is not marked for a rerun."""
    error = RasterioIOError(text)
    assert (is_retryable(error, href), is_transient(error, href)) == (retried, transient)


def test_a_404_is_permanent_and_not_retried(scenes, gdal_env):
    root, items, grid = scenes
    gdal_env.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with serve_files(root) as files:
        item = files.served_item(items[0])
        item["assets"]["red"]["href"] = f"{files.url}/missing/B04.tif"
        got = read([item_ref(item)], grid, on_bad_asset="skip", retry=ReadRetry(3, 0.0))
    (skip,) = got.skipped
    assert skip["transient"] is False and "404" in skip["reason"]
    assert files.counts["/missing/B04.tif"] == 1  # read once: a 404 does not pass by waiting


def test_raise_names_item_asset_href_and_http_status(scenes, gdal_env):
    """A 503 that outlasts every retry: the message says 503, not "not a supported format"."""
    root, items, grid = scenes
    gdal_env.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with serve_files(root, fault_rate=1.0, faults=["503"], fault_only="B04") as files:
        ref = item_ref(files.served_item(items[0]))
        with pytest.raises(BadAssetError) as error:
            read([ref], grid, retry=ReadRetry(2, 0.0))
    message = str(error.value)
    href = ref.hrefs[ref.keys.index("red")]
    assert ref.id in message and "'red'" in message and href in message
    assert "HTTP response code: 503" in message and "3 attempts" in message
    assert "not recognized" not in message
    assert files.counts[href.removeprefix(files.url)] == 3


# --- 2. skips are honest ----------------------------------------------------------------------


def test_transient_skips_are_recorded_and_only_their_tiles_redone(
    inputs, clean, tmp_path, workflow_file
):
    """Every read of the south-east tile's extra scene fails, with no retry: the run keeps going
    under ``skip``, says what it left out, and the next run redoes that tile alone."""
    options = {
        "stac": {"on_bad_asset": "skip"},
        "read_retries": 0,
        "gdal": {"GDAL_HTTP_MAX_RETRY": "0"},
    }
    # Server errors only: a header cut short on every attempt reads as a file that is no raster.
    outage = {"fault_rate": 1.0, "faults": ["503", "reset"], "fault_only": f"/{EXTRA}/"}
    with served(inputs, tmp_path, **outage) as (files, url):
        first, region = run(inputs, workflow_file, tmp_path, url, **options)
        record = json.loads((region / "provenance.json").read_text())
        skipped = {t["id"]: t["skipped"] for t in record["tiles"]}
        (retry,) = record["tiles_to_retry"]
        (skip,) = skipped[retry]
        assert skip["id"].startswith("S2A_SYN_20230702") and skip["transient"] is True
        assert skip["href"].startswith(f"{files.url}/{EXTRA}/") and skip["asset"]
        assert skip["pixels"] == 48 * 48 and skip["reason"]
        assert all(not s for tile, s in skipped.items() if tile != retry)
        assert (first.skipped_assets, first.transient_skips, first.tiles_to_retry) == (1, 1, 1)
        assert "run the same command again" in first.report()
        item = json.loads((region / "land_cover.json").read_text())["properties"]
        assert item["timesenclip:skipped_assets"] == 1
        assert item["timesenclip:skipped_items"] == [skip["id"]]
        assert item["timesenclip:skips_to_retry"] == 1
        done = {p.parent.name for p in region.glob(".tiles/*/*/done.json")}
        assert done == set(skipped) - {retry}
        assert map_digests(region) != clean  # the scene is missing from the maps

        files.fault_rate = 0.0  # the outage is over
        second, region = run(inputs, workflow_file, tmp_path, url, **options)
        third, _ = run(inputs, workflow_file, tmp_path, url, **options)
    assert (second.tiles, second.tiles_skipped, second.skipped_assets) == (1, 3, 0)
    assert map_digests(region) == clean
    record = json.loads((region / "provenance.json").read_text())
    assert record["tiles_to_retry"] == [] and not (region / ".tiles").exists()
    assert (third.tiles, third.tiles_skipped) == (0, 4)  # complete now


# --- 3. inputs are checked --------------------------------------------------------------------


def with_file_crs(path: Path, epsg: int) -> None:
    with rasterio.open(path, "r+") as ds:
        ds.crs = rasterio.CRS.from_epsg(epsg)


@pytest.mark.parametrize("wrong", ["crs", "transform", "shape"])
def test_an_asset_that_disagrees_with_its_item_is_refused(scenes, tmp_path, wrong):
    _, items, grid = scenes
    item = json.loads(json.dumps(items[0]))
    asset = item["assets"]["red"]
    if wrong == "crs":  # the file in 32632, its item in 32631
        copy = tmp_path / "B04.tif"
        copy.write_bytes(Path(asset["href"]).read_bytes())
        with_file_crs(copy, 32632)
        asset["href"] = str(copy)
        expected = "CRS EPSG:32632, not EPSG:32631"
    elif wrong == "transform":
        asset["proj:transform"] = [10.0, 0.0, asset["proj:transform"][2] + 20, 0.0, -10.0, 0.0]
        expected = "transform"
    else:
        asset["proj:shape"] = [64, 64]
        expected = "size 32x32 px, not 64x64"
    with pytest.raises(BadAssetError, match=expected) as error:
        read([item_ref(item)], grid)
    assert item["id"] in str(error.value) and "STAC metadata" in str(error.value)
    got = read([item_ref(item), item_ref(items[1])], grid, on_bad_asset="skip")
    (skip,) = got.skipped
    assert skip["id"] == item["id"] and skip["transient"] is False
    assert [r.id for r in got.used] == [items[1]["id"]]


def test_hrefs_are_limited_to_urls_and_allowed_folders(scenes, tmp_path):
    root, items, _ = scenes
    ref = item_ref(items[0])
    check_hrefs([ref], [root])
    urls = ("https://a.b/x.tif", "s3://bucket/x.tif", "gs://bucket/x.tif", "http://h/x.tif")
    check_hrefs([dataclasses.replace(ref, hrefs=(urls * 3)[: len(ref.keys)])], [])
    outside = tmp_path / "elsewhere" / "B02.tif"
    for href in (str(outside), f"file://{outside}", "/vsicurl/http://h/x.tif", "ftp://h/x.tif"):
        bad = dataclasses.replace(ref, hrefs=(href, *ref.hrefs[1:]))
        with pytest.raises(HrefNotAllowedError, match=r"stac\.allowed_paths") as error:
            check_hrefs([bad], [root])
        assert href in str(error.value) and ref.id in str(error.value)
    sneaky = dataclasses.replace(ref, hrefs=(f"{root}/../elsewhere/B02.tif", *ref.hrefs[1:]))
    with pytest.raises(HrefNotAllowedError):
        check_hrefs([sneaky], [root])


def test_a_local_api_needs_its_folder_allowed_at_planning(inputs, tmp_path, workflow_file):
    _, workflow, collection, items = inputs
    stac = {k: v for k, v in workflow["stac"].items() if k != "allowed_paths"}
    with serve_stac(collection, items, tmp_path / "api") as url:
        path = workflow_file(tmp_path, workflow, stac={**stac, "url": url})
        with pytest.raises(HrefNotAllowedError, match="allowed_paths: none"):
            run_workflow(load_workflow(path), dry_run=True)  # refused before any read


def test_a_file_source_allows_its_own_folder_by_default(tmp_path, workflow_file):
    from pipeline.workflow.schema import StacConfig

    items = tmp_path / "stac" / "items.json"
    items.parent.mkdir()
    items.write_text("{}")
    assert StacConfig(file=items).reading_folders() == [items.parent]
    assert StacConfig(url="http://127.0.0.1:1").reading_folders() == []
    allowed = StacConfig(url="http://127.0.0.1:1", allowed_paths=[tmp_path])
    assert allowed.reading_folders() == [tmp_path]
