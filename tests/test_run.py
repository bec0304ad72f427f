"""End to end: workflow -> local STAC API -> multi-process Dask -> COGs, QML, STAC, provenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from encoder.checkpoint import file_sha256, load_encoder
from encoder.prompts import TextEncoder, class_set
from encoder.zeroshot import score
from fixtures.stac_server import serve_stac
from pipeline.cli import main
from pipeline.cube.lazy import build_cube
from pipeline.geo.tiles import Tile, region_mask
from pipeline.maps.cog import read_category_names
from pipeline.maps.outputs import OUTSIDE_REGION
from pipeline.maps.pixel_encoder import embed_series, pixel_series
from pipeline.maps.style import class_colors
from pipeline.run.execute import run_workflow
from pipeline.workflow.load import load_workflow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(demo_inputs, workflow_file):
    """One uninterrupted run on a two-process LocalCluster."""
    root, workflow, synthetic = demo_inputs
    out = root / "run-full"
    path = workflow_file(
        out,
        workflow,
        outputs={**workflow["outputs"], "dir": str(out / "maps")},
        dask={"n_workers": 2, "threads_per_worker": 1},
    )
    summary = run_workflow(load_workflow(path), progress=False)
    return out / "maps" / "synthetic", summary, load_workflow(path), synthetic


def inside_region(workflow, src) -> np.ndarray:
    """The map's pixels whose centres lie inside the region's lon/lat bbox."""
    grid = Tile("r", src.crs.to_epsg(), 0, 0, tuple(src.bounds), src.shape, src.res[0])
    return region_mask(workflow.regions[0].area, grid)


def expected_maps(workflow, region_dir: Path, synthetic):
    """Recompute the maps for the region's grid in one piece, without tiles, chunks or Dask."""
    with rasterio.open(region_dir / "land_cover.tif") as src:
        bounds, epsg = tuple(src.bounds), src.crs.to_epsg()
        inside = inside_region(workflow, src)
    items = [pystac.Item.from_dict(d) for d in synthetic.items]
    cube = build_cube(items, epsg=epsg, bounds=bounds, year=2023, chunk_size=1024).compute()
    series, present = pixel_series(cube["composite"].values)
    model = load_encoder(workflow.model.checkpoint)
    embeddings = embed_series(model, series, present)
    text = TextEncoder(model=workflow.model.clip.model, pretrained=workflow.model.clip.pretrained)
    h, w = cube.sizes["y"], cube.sizes["x"]
    maps = {}
    for task in workflow.tasks:
        weights = text.class_embeddings(task.class_specs(), task.templates)
        result = score(embeddings, weights)
        label = np.where(result.label.numpy() >= 0, result.label.numpy() + 1, 0).reshape(h, w)
        maps[task.name] = np.where(inside, label, 0)
    assert 0 < (~inside).sum() < inside.sum() / 10  # the corners of the projected bbox only
    return maps, np.where(inside, cube["valid_months"].values, OUTSIDE_REGION)


def test_maps_equal_a_direct_computation(finished):
    region_dir, summary, workflow, synthetic = finished
    maps, valid_months = expected_maps(workflow, region_dir, synthetic)
    for name, expected in maps.items():
        with rasterio.open(region_dir / f"{name}.tif") as src:
            got = src.read(1)
        np.testing.assert_array_equal(got, expected)
        assert len(np.unique(got)) > 1
    with rasterio.open(region_dir / "valid_months.tif") as src:
        np.testing.assert_array_equal(src.read(1), valid_months)
    assert summary.pixels == valid_months.size  # every pixel mapped once: no seams, no overlaps
    assert summary.tiles == 4


def test_valid_months_match_the_scenes(finished):
    """Hand count: months with at least one clear acquisition, at the scenes' own pixels."""
    region_dir, _, workflow, synthetic = finished
    clear = np.stack([~np.isin(s.scl, [0, 1, 3, 8, 9, 10]) for s in synthetic.scenes])
    months = np.array([s.datetime.month for s in synthetic.scenes])
    expected = sum(clear[months == m].any(axis=0) for m in range(1, 13)).astype(np.uint8)
    with rasterio.open(region_dir / "valid_months.tif") as src:
        col0, row0 = ~src.transform * (synthetic.bounds[0], synthetic.bounds[3])
        got = src.read(1)
        inside = inside_region(workflow, src)
    r, c = -round(row0), -round(col0)
    expected = expected[r : r + got.shape[0], c : c + got.shape[1]]
    np.testing.assert_array_equal(got, np.where(inside, expected, OUTSIDE_REGION))


def test_georeferencing_palette_categories_overviews(finished):
    region_dir, _, _, synthetic = finished
    with rasterio.open(region_dir / "land_cover.tif") as src:
        assert src.crs.to_epsg() == synthetic.epsg
        assert src.transform.a == 10 and src.transform.e == -10
        assert src.transform.c % 10 == 0 and src.transform.f % 10 == 0
        assert src.dtypes[0] == "uint8" and src.nodata == 0
        assert src.overviews(1)
        assert src.profile["tiled"]
        colormap = src.colormap(1)
        classes = class_set("land_cover")
        for value, color in enumerate(class_colors(classes), start=1):
            assert colormap[value][:3] == tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    assert read_category_names(region_dir / "land_cover.tif")[1:] == [c.name for c in classes]
    qml = ET.parse(region_dir / "land_cover.qml").getroot()
    labels = [e.get("label") for e in qml.iter("paletteEntry")]
    assert labels == [c.name for c in classes]
    item = json.loads((region_dir / "land_cover.json").read_text())
    entries = item["assets"]["data"]["classification:classes"]
    assert [e["title"] for e in entries if e["value"]] == [c.name for c in classes]
    with (
        rasterio.open(region_dir / "land_cover_confidence.tif") as conf,
        rasterio.open(region_dir / "land_cover.tif") as labels,
    ):
        confidence, label = conf.read(1), labels.read(1)
    np.testing.assert_array_equal(confidence == 255, label == 0)
    # A softmax over 8 classes gives the top class at least 1/8.
    assert confidence[label > 0].min() >= 12 and confidence[label > 0].max() <= 100


def test_provenance_records_the_run(finished):
    region_dir, _, workflow, synthetic = finished
    record = json.loads((region_dir / "provenance.json").read_text())
    assert sorted(record["stac_items"]) == sorted(i["id"] for i in synthetic.items)
    assert {h["item_id"] for h in record["harmonization"]} == {i["id"] for i in synthetic.items}
    assert len(record["checkpoint_sha256"]) == 64
    assert record["workflow"]["name"] == "demo"
    assert [t["name"] for t in record["tasks"]] == [t.name for t in workflow.tasks]
    assert not (region_dir / ".tiles").exists()  # tile pieces go once the region is complete


def test_reclassify_from_embeddings(finished, tmp_path):
    region_dir, _, _, _ = finished
    store = region_dir / "embeddings.zarr"
    # No --clip-model: the store records the run's CLIP model (here the tiny local-dir one).
    code = main(
        ["classify", str(store), "--classes", "lc", "--name", "again", "--out", str(tmp_path)]
    )
    assert code == 0
    with (
        rasterio.open(tmp_path / "again.tif") as new,
        rasterio.open(region_dir / "land_cover.tif") as old,
    ):
        assert new.crs == old.crs
        col, row = ~new.transform * (old.bounds.left, old.bounds.top)
        window = ((round(row), round(row) + old.height), (round(col), round(col) + old.width))
        again = new.read(1, window=window)
        # float16 storage may flip a near-tie; nearly all pixels agree.
        assert (again == old.read(1)).mean() > 0.98


def test_rerun_skips_finished_work(finished):
    region_dir, _, workflow, _ = finished
    before = {p: p.stat().st_mtime_ns for p in region_dir.glob("*.tif")}
    summary = run_workflow(workflow, progress=False)
    assert summary.tiles == 0
    assert {p: p.stat().st_mtime_ns for p in region_dir.glob("*.tif")} == before


def test_changed_inputs_redo_the_region(demo_inputs, tmp_path, workflow_file):
    """A finished region is redone, not skipped, when what its pixels depend on changes."""
    _, workflow, _ = demo_inputs
    first = workflow_file(tmp_path / "a", workflow, outputs={"dir": str(tmp_path / "maps")})
    assert run_workflow(load_workflow(first), progress=False).tiles == 4
    stac = {**workflow["stac"], "max_cloud_cover": 20}
    changed = workflow_file(
        tmp_path / "b", workflow, stac=stac, outputs={"dir": str(tmp_path / "maps")}
    )
    rerun = run_workflow(load_workflow(changed), progress=False)
    assert rerun.tiles == 4 and rerun.tiles_skipped == 0
    record = json.loads((tmp_path / "maps" / "synthetic" / "provenance.json").read_text())
    assert record["workflow"]["stac"]["max_cloud_cover"] == 20


def test_killed_run_resumes_to_the_same_files(demo_inputs, finished, workflow_file):
    root, workflow, _ = demo_inputs
    region_full = finished[0]
    out = root / "run-killed"
    path = workflow_file(
        out,
        workflow,
        outputs={**workflow["outputs"], "dir": str(out / "maps"), "embeddings": False},
        dask={"n_workers": 1, "threads_per_worker": 1},
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(path), "--quiet"],
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not list((out / "maps").rglob("done.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    region_dir = out / "maps" / "synthetic"
    assert not (region_dir / "provenance.json").exists()
    assert main(["run", str(path), "--quiet"]) == 0
    for name in ("land_cover.tif", "custom.tif", "land_cover_confidence.tif", "valid_months.tif"):
        with rasterio.open(region_dir / name) as got, rasterio.open(region_full / name) as want:
            np.testing.assert_array_equal(got.read(1), want.read(1))
            assert got.transform == want.transform
    assert not [p for p in region_dir.rglob("*") if ".tmp" in p.name]


def test_dry_run_reads_nothing(demo_inputs, tmp_path, capsys, workflow_file):
    _, workflow, _ = demo_inputs
    path = workflow_file(tmp_path, workflow, outputs={"dir": str(tmp_path / "maps")})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tile" in out and "24 item(s)" in out and "dry run" in out
    assert not (tmp_path / "maps").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": [{"name": "x", "classes": "land_cuver"}]}, "land_cuver"),
        ({"regions": [{"name": "r", "bbox": [3.8, 43.5, 200, 43.6]}]}, "bbox"),
        ({"model": {"checkpoint": "missing.ckpt"}}, "missing.ckpt"),
    ],
)
def test_bad_workflows_fail_clearly(demo_inputs, tmp_path, capsys, change, message, workflow_file):
    _, workflow, _ = demo_inputs
    path = workflow_file(tmp_path, workflow, **change)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_search_fails_clearly(demo_inputs, tmp_path, capsys, workflow_file):
    _, workflow, _ = demo_inputs
    path = workflow_file(tmp_path, workflow, year=2019)
    assert main(["run", str(path)]) == 2
    assert "2019" in capsys.readouterr().err


def test_unreadable_asset_fails_clearly(demo_inputs, tmp_path, capsys, workflow_file):
    _, workflow, synthetic = demo_inputs
    broken = [json.loads(json.dumps(i)) for i in synthetic.items]
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"not a tiff")
    broken[3]["assets"]["red"]["href"] = str(bad)
    with serve_stac(synthetic.collection, broken, tmp_path / "stac") as url:
        path = workflow_file(
            tmp_path,
            workflow,
            stac={
                **workflow["stac"],
                "url": url,
                "allowed_paths": [*workflow["stac"]["allowed_paths"], str(tmp_path)],
            },
            outputs={"dir": str(tmp_path / "maps")},
            dask={"n_workers": 1},
        )
        assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert broken[3]["id"] in err and "Traceback" not in err


def test_hub_checkpoints_reach_workers_as_hub_sources(
    demo_inputs, tmp_path, monkeypatch, workflow_file
):
    """Workers (maybe on other machines) fetch a hub checkpoint themselves, not our cache path."""
    from pipeline.plan import settings as run

    _, workflow, _ = demo_inputs
    local = workflow["model"]["checkpoint"]
    model = {**workflow["model"], "checkpoint": "hf-hub:owner/repo/sub/encoder.pt"}
    path = workflow_file(tmp_path, workflow, model=model)
    asked = []
    monkeypatch.setattr(run, "resolve_source", lambda s: asked.append(s) or Path(local))
    source, digest, dim, _ = run.check_checkpoint(load_workflow(path))
    assert asked == ["hf-hub:owner/repo/sub/encoder.pt"]
    assert source == "hf-hub:owner/repo/sub/encoder.pt"
    assert digest == file_sha256(local) and dim == 32


def test_unreachable_scheduler_is_a_clear_error(demo_inputs, tmp_path, capsys, workflow_file):
    import dask

    _, workflow, _ = demo_inputs
    path = workflow_file(tmp_path, workflow, outputs={"dir": str(tmp_path / "maps")})
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(["run", str(path), "--quiet", "--cluster", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and "Traceback" not in err
