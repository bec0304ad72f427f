"""The execution model on a real external cluster: lost workers, repeated runs, tiled outputs,
regions across two UTM zones."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from encoder.checkpoint import load_encoder
from encoder.prompts import TextEncoder, class_set
from encoder.zeroshot import score
from fixtures.stac_server import serve_stac
from fixtures.synthetic import write_synthetic_collection
from pipeline.cube.lazy import build_cube
from pipeline.geo.tiles import Tile, region_mask
from pipeline.maps.cog import read_category_names
from pipeline.maps.outputs import OUTSIDE_REGION
from pipeline.maps.pixel_encoder import embed_series, pixel_series
from pipeline.run.execute import run_workflow
from pipeline.workflow.load import load_workflow, with_cluster

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("land_cover", "custom", "land_cover_confidence", "custom_confidence", "valid_months")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, stopped by pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        self.workers: list[subprocess.Popen] = []
        self.scheduler = self._spawn(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"
        )

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = (self.root / f"{args[0]}-{len(self.workers)}-{time.monotonic_ns()}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def add_worker(self, threads: int = 2) -> subprocess.Popen:
        # No nanny: killing the worker's pid loses the worker for good, as a crashed node would.
        worker = self._spawn(
            "worker", self.address, "--nthreads", str(threads), "--no-nanny",
            "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(self.root),
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)

    def kill(self, process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            self.kill(process)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        for _ in range(2):
            cluster.add_worker(threads=2)
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


def on(workflow, cluster: Cluster):
    """``workflow`` run on the external ``cluster``, as ``run --cluster ADDRESS`` does."""
    return with_cluster(workflow, cluster.address)


def outputs(workflow: dict, folder: Path, **changes) -> dict:
    return {**workflow["outputs"], "dir": str(folder), "embeddings": False, **changes}


def read_layers(region_dir: Path, suffix: str = ".tif") -> dict[str, np.ndarray]:
    layers = {}
    for name in LAYERS:
        with rasterio.open(region_dir / f"{name}{suffix}") as src:
            layers[name] = src.read(1)
    return layers


def assert_same_maps(region_dir: Path, reference: dict, suffix: str = ".tif") -> None:
    got = read_layers(region_dir, suffix)
    for name in LAYERS:
        np.testing.assert_array_equal(got[name], reference[name])


@pytest.fixture(scope="module")
def reference(demo_inputs, cluster, workflow_file, tmp_path_factory):
    """An uninterrupted run on the external cluster."""
    _, workflow, _ = demo_inputs
    out = tmp_path_factory.mktemp("reference")
    path = workflow_file(out, workflow, outputs=outputs(workflow, out / "maps"), dask={})
    run_workflow(on(load_workflow(path), cluster), progress=False)
    return read_layers(out / "maps" / "synthetic")


@pytest.mark.timeout(1200)
def test_repeated_runs_on_two_workers_of_two_threads_never_fail(
    demo_inputs, cluster, reference, workflow_file, tmp_path
):
    """Five runs in a row (each about a minute on a slow 2-core machine) on the same workers."""
    _, workflow, _ = demo_inputs
    for attempt in range(5):
        out = tmp_path / f"run{attempt}"
        path = workflow_file(out, workflow, outputs=outputs(workflow, out / "maps"), dask={})
        run_workflow(on(load_workflow(path), cluster), progress=False)
        assert_same_maps(out / "maps" / "synthetic", reference)
    # The tiles' blocks of months waited beside the workers' folders, and went with their tiles
    # (on a thread of the worker's, so the last ones may still be going).
    (composites,) = cluster.root.rglob("timesenclip-composites")
    for _ in range(120):
        if not list(composites.iterdir()):
            break
        time.sleep(0.5)
    assert not list(composites.iterdir())


def _first_piece(folder: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.rglob("*.npz")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before a worker could be killed"
        time.sleep(0.05)


def _run_in_background(path: Path, address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(path), "--quiet",
             "--cluster", address],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_a_worker_killed_mid_run_costs_nothing(
    demo_inputs, cluster, reference, workflow_file, tmp_path
):
    _, workflow, _ = demo_inputs
    path = workflow_file(tmp_path, workflow, outputs=outputs(workflow, tmp_path / "maps"), dask={})
    run = _run_in_background(path, cluster.address, tmp_path / "run.log")
    try:
        _first_piece(tmp_path / "maps", run)
        cluster.kill(cluster.workers[0])
        assert run.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()
    finally:
        if run.poll() is None:
            run.kill()
        cluster.workers[0] = cluster.add_worker(threads=2)
        cluster.wait_for_workers(2)
    assert_same_maps(tmp_path / "maps" / "synthetic", reference)


def test_no_worker_left_is_a_clear_error_and_a_rerun_resumes(
    demo_inputs, cluster, reference, workflow_file, tmp_path
):
    _, workflow, _ = demo_inputs
    dask = {"no_worker_timeout": 3}
    path = workflow_file(
        tmp_path, workflow, outputs=outputs(workflow, tmp_path / "maps"), dask=dask
    )
    run = _run_in_background(path, cluster.address, tmp_path / "run.log")
    try:
        _first_piece(tmp_path / "maps", run)
        for worker in cluster.workers:
            cluster.kill(worker)
        assert run.wait(timeout=120) == 3  # a cluster failure
    finally:
        if run.poll() is None:
            run.kill()
        cluster.workers = [cluster.add_worker(threads=2) for _ in range(2)]
    log = (tmp_path / "run.log").read_text()
    assert "no worker" in log and "run the same command again" in log and "Traceback" not in log
    cluster.wait_for_workers(2)
    run_workflow(on(load_workflow(path), cluster), progress=False)
    assert_same_maps(tmp_path / "maps" / "synthetic", reference)


def test_large_regions_are_per_tile_cogs_behind_one_vrt(
    demo_inputs, cluster, reference, workflow_file, tmp_path
):
    _, workflow, _ = demo_inputs
    out = outputs(workflow, tmp_path / "maps", mosaic_max_pixels=1)
    path = workflow_file(tmp_path, workflow, outputs=out, dask={})
    run_workflow(on(load_workflow(path), cluster), progress=False)
    region = tmp_path / "maps" / "synthetic"
    assert_same_maps(region, reference, suffix=".vrt")
    tiles = sorted((region / "land_cover").glob("*.tif"))
    assert len(tiles) == 4
    for tile in tiles:
        with rasterio.open(tile) as src:
            # Each tile is a styled COG in the run's block size (too small here for overviews).
            assert src.profile["tiled"] and src.profile["blockxsize"] == 128
            assert src.colormap(1)[1][:3] != (0, 0, 0)
        names = [c.name for c in class_set("land_cover")]
        assert read_category_names(tile)[1:] == names
        assert tile.with_suffix(".qml").exists() and tile.with_suffix(".json").exists()
    collection = pystac.Collection.from_file(str(region / "land_cover" / "collection.json"))
    assert len(list(collection.get_items())) == 4
    assert (region / "land_cover.qml").exists()
    assert not (region / "land_cover.tif").exists()


@pytest.fixture(scope="module")
def two_zones(tmp_path_factory):
    """Scenes on both sides of 6 degrees east, each in its own UTM zone, served by one API."""
    root = tmp_path_factory.mktemp("zones")
    west = write_synthetic_collection(
        root / "west", epsg=32631, origin=(741700.0, 4802000.0), shape=(370, 140)
    )
    east = write_synthetic_collection(
        root / "east", epsg=32632, origin=(256900.0, 4802000.0), shape=(370, 140), seed=1
    )
    for item in east.items:
        item["id"] = item["id"].replace("_0_", "_1_")
    with serve_stac(west.collection, west.items + east.items, root / "api") as url:
        yield url, west.items + east.items, root


def expected_zone_maps(workflow, path: Path, items: list[dict]) -> dict[str, np.ndarray]:
    """The maps of one zone's mosaic grid computed in one piece, with no tiles or chunks."""
    with rasterio.open(path) as src:
        bounds, epsg, shape = tuple(src.bounds), src.crs.to_epsg(), src.shape
    grid = Tile("r", epsg, 0, 0, bounds, shape, 10.0)
    inside = region_mask(workflow.regions[0].area, grid)
    cube = build_cube(items, epsg=epsg, bounds=bounds, year=2023, chunk_size=4096).compute()
    series, present = pixel_series(cube["composite"].values)
    embeddings = embed_series(load_encoder(workflow.model.checkpoint), series, present)
    text = TextEncoder(model=workflow.model.clip.model, pretrained=workflow.model.clip.pretrained)
    maps = {"valid_months": np.where(inside, cube["valid_months"].values, OUTSIDE_REGION)}
    for task in workflow.tasks:
        result = score(embeddings, text.class_embeddings(task.class_specs(), task.templates))
        label = np.where(result.label.numpy() >= 0, result.label.numpy() + 1, 0)
        maps[task.name] = np.where(inside, label.reshape(shape), 0)
    return maps


def test_many_tiles_across_two_zones_equal_a_one_piece_computation(
    demo_inputs, two_zones, cluster, workflow_file, tmp_path
):
    _, workflow, _ = demo_inputs
    url, items, scenes = two_zones
    changes = {
        "regions": [{"name": "r", "bbox": [5.985, 43.30, 6.015, 43.33]}],
        "stac": {**workflow["stac"], "url": url, "allowed_paths": [str(scenes)]},
        "outputs": outputs(workflow, tmp_path / "maps"),
        "dask": {},
    }
    path = workflow_file(tmp_path, workflow, **changes)
    loaded = load_workflow(path)
    assert len(loaded.tiles(loaded.regions[0])) == 6
    summary = run_workflow(on(loaded, cluster), progress=False)
    assert summary.tiles == 6
    region = tmp_path / "maps" / "r"
    for epsg in (32631, 32632):
        expected = expected_zone_maps(loaded, region / f"land_cover_EPSG{epsg}.tif", items)
        for name, want in expected.items():
            with rasterio.open(region / f"{name}_EPSG{epsg}.tif") as src:
                got = src.read(1)
            np.testing.assert_array_equal(got, want)
            assert len(np.unique(got)) > 1  # real content, not all nodata
