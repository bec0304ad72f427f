"""The run plan: one search per run, items parsed once, chunk tasks with the items they meet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rustac
import yaml

from fixtures.synthetic import write_synthetic_collection
from pipeline.chunks import tile_chunks
from pipeline.plan import RegionTarget, describe, make_plan, tile_bytes
from pipeline.stac import StacSource, search_boxes
from pipeline.workflow import load_workflow


def workflow_for(folder: Path, items_file: Path, bbox, scenes: Path, **cube) -> Path:
    data = {
        "name": "plan",
        "year": 2023,
        "regions": [{"name": "r", "bbox": list(bbox)}],
        "stac": {"file": str(items_file), "allowed_paths": [str(scenes)]},
        "cube": {"tile_size": 256, "chunk_size": 64, **cube},
        "model": {"checkpoint": "x.pt"},
        "tasks": [{"name": "land_cover", "classes": "land_cover"}],
        "outputs": {"dir": str(folder / "maps")},
    }
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two collections side by side, 2.6 km apart, so tiles see different item sets."""
    root = tmp_path_factory.mktemp("plan")
    west = write_synthetic_collection(root / "west", origin=(500000.0, 4800800.0), shape=(96, 96))
    east = write_synthetic_collection(
        root / "east", origin=(503500.0, 4800800.0), shape=(96, 96), seed=1
    )
    for item in east.items:  # another granule of the same dates
        item["id"] = item["id"].replace("_0_", "_1_")
    return root, west.items + east.items


def write_items(root: Path, items: list[dict], kind: str) -> Path:
    if kind == "ndjson":
        path = root / "items.ndjson"
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    elif kind == "json":
        path = root / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    else:
        path = root / "items.parquet"
        rustac.write_sync(str(path), items)
    return path


def plan_for(folder: Path, items_file: Path, scenes: Path):
    (folder / "x.pt").write_bytes(b"")
    bbox = (3.0005, 43.352, 3.054, 43.3595)
    workflow = load_workflow(workflow_for(folder, items_file, bbox, scenes))
    region = workflow.regions[0]
    target = RegionTarget(region, folder / "maps" / "r", folder / "scratch", "key")
    return workflow, make_plan(workflow, [target])


def summary_of(plan) -> list[tuple[str, list[str]]]:
    return [(t.tile.id, sorted(plan.refs[i].id for i in t.items)) for t in plan.regions[0].tiles]


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_json_ndjson_and_geoparquet_files_give_the_same_plan(scenes, tmp_path, kind):
    root, items = scenes
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, reference = plan_for(tmp_path / "a", write_items(tmp_path / "a", items, "ndjson"), root)
    _, other = plan_for(tmp_path / "b", write_items(tmp_path / "b", items, kind), root)
    assert summary_of(other) == summary_of(reference)
    assert other.refs == reference.refs


def test_items_are_parsed_once_and_tiles_share_them(scenes, tmp_path):
    root, items = scenes
    _, plan = plan_for(tmp_path, write_items(tmp_path, items, "ndjson"), root)
    tiles = plan.regions[0].tiles
    assert len(tiles) >= 2
    assert len(plan.refs) == len({r.id for r in plan.refs}) == len(items)
    # Each tile only lists the items whose footprint meets it: west and east differ.
    sets = {frozenset(t.items) for t in tiles}
    assert len(sets) > 1
    assert all(0 < len(t.items) < len(items) for t in tiles)


def test_chunk_tasks_carry_only_the_items_meeting_their_chunk(scenes, tmp_path):
    root, items = scenes
    workflow, plan = plan_for(tmp_path, write_items(tmp_path, items, "ndjson"), root)
    region = plan.regions[0]
    counts = []
    for tile in region.tiles:
        tasks = list(plan.chunk_tasks(tile, region.region))
        assert [t.chunk for t in tasks] == tile_chunks(tile.tile, workflow.cube.chunk_size)
        for task in tasks:
            tile_items = {plan.refs[i].id for i in tile.items}
            assert {r.id for r in task.items} <= tile_items
            assert all(r.meets(task.chunk.grid) for r in task.items)
            missed = [plan.refs[i] for i in tile.items if plan.refs[i] not in task.items]
            assert not any(r.meets(task.chunk.grid) for r in missed)
            counts.append(len(task.items))
    assert min(counts) < max(counts)  # chunks near one collection see only its scenes


def test_an_api_source_gives_the_same_items_as_the_file(scenes, tmp_path):
    from fixtures.stac_server import serve_stac

    _, items = scenes
    collection = write_synthetic_collection(tmp_path / "c", shape=(8, 8)).collection
    boxes = [(2.99, 43.352, 3.005, 43.36), (3.046, 43.352, 3.056, 43.36), (10, 50, 10.1, 50.1)]
    path = write_items(tmp_path, items, "ndjson")
    from_file = search_boxes(StacSource(file=path), boxes, 2023)
    with serve_stac(collection, items, tmp_path / "api") as url:
        from_api = search_boxes(StacSource(url=url), boxes, 2023, concurrency=3)

    def ids(catalog):
        return [sorted(catalog.items[j]["id"] for j in found) for found in catalog.found]

    assert ids(from_api) == ids(from_file)
    assert ids(from_file)[2] == []  # a box with no item is no error
    assert ids(from_file)[0] and ids(from_file)[0] != ids(from_file)[1]


def test_dry_run_report_counts_tiles_chunks_and_bytes(scenes, tmp_path):
    root, items = scenes
    sized = json.loads(json.dumps(items))
    for item in sized:
        for asset in item["assets"].values():
            asset["file:size"] = 1000
    workflow, plan = plan_for(tmp_path, write_items(tmp_path, sized, "ndjson"), root)
    region = plan.regions[0]
    text = describe(plan, workflow, pixels_per_second=500.0)
    chunks = sum(plan.chunk_count(t) for t in region.tiles)
    assert f"{chunks:,} chunk tasks" in text
    assert f"{len(region.tiles)} tile(s)" in text and "estimated encoder time" in text
    for tile in region.tiles:
        size = tile_bytes(plan, tile)
        # Never more than all of its items' files, and some of them.
        assert 0 < size <= 11_000 * len(tile.items)
