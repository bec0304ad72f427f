"""The run plan: one search per run, items parsed once, chunk tasks with the items they meet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rustac
import yaml

from fixtures.synthetic import write_synthetic_collection
from pipeline.geo.chunks import tile_chunks
from pipeline.plan.report import describe
from pipeline.plan.scenes import RegionTarget, make_plan, tile_bytes
from pipeline.search.stac import StacSource, search_boxes
from pipeline.workflow.load import load_workflow


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


def brute_force(items: list[dict], boxes) -> list[list[str]]:
    """Per box, the ids of the items whose bbox meets it (edges included), in file order."""

    def meets(item, box):
        west, south, east, north = item["bbox"]
        return not (west > box[2] or east < box[0] or south > box[3] or north < box[1])

    return [[i["id"] for i in items if meets(i, box)] for box in boxes]


@pytest.mark.parametrize("kind", ["ndjson", "json", "parquet"])
def test_streamed_file_search_matches_a_search_of_every_item_held_in_memory(scenes, tmp_path, kind):
    _, items = scenes
    first = items[0]["bbox"]
    boxes = [
        tuple(first),  # every edge shared with the west granule
        (first[2], first[1], first[2] + 0.01, first[3]),  # touches its east edge only
        (2.99, 43.352, 3.005, 43.36),
        (3.046, 43.352, 3.056, 43.36),
        (10, 50, 10.1, 50.1),  # nothing there
    ]
    calls: list[str] = []

    def reduce(item: dict) -> str:
        calls.append(item["id"])
        return item["id"]

    catalog = search_boxes(
        StacSource(file=write_items(tmp_path, items, kind)), boxes, 2023, reduce=reduce
    )
    found = [[catalog.items[j] for j in box] for box in catalog.found]
    assert found == brute_force(items, boxes)
    assert found[-1] == [] and found[0] and found[1]
    # Each item reduced once however many boxes found it, and only items some box found.
    assert sorted(calls) == sorted({i for box in found for i in box})
    assert len(calls) == len(set(calls))


def test_items_without_bbox_reach_every_box_and_duplicates_are_kept_once(scenes, tmp_path):
    _, items = scenes
    loose = json.loads(json.dumps(items[0]))
    loose["id"] = "no-bbox"
    del loose["bbox"]
    doubled = [*items, items[0], loose]
    boxes = [(2.99, 43.352, 3.005, 43.36), (3.046, 43.352, 3.056, 43.36)]
    catalog = search_boxes(StacSource(file=write_items(tmp_path, doubled, "ndjson")), boxes, 2023)
    ids = [item["id"] for item in catalog.items]
    assert len(ids) == len(set(ids)) == len(items) + 1
    for box, expected in zip(catalog.found, brute_force(items, boxes), strict=True):
        names = [catalog.items[j]["id"] for j in box]
        assert sorted(set(names)) == sorted({*expected, "no-bbox"})


def test_the_plan_keeps_item_refs_only(scenes, tmp_path):
    from pipeline.search.items import ItemRef, usable_refs

    root, items = scenes
    _, plan = plan_for(tmp_path, write_items(tmp_path, items, "ndjson"), root)
    assert all(isinstance(r, ItemRef) for r in plan.refs)
    # The same refs as reducing every item of the file in memory, in file order.
    assert list(plan.refs) == usable_refs(items, 2023, "raise")[0]


def test_plan_benchmark_runs_at_a_tiny_scale():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "plan.py"),
            *("--scales", "1,4", "--parquet-scales", "", "--api-scales", ""),
            *("--side-km", "3", "--tile", "256", "--repeats", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ndjson")]
    assert [row[2].strip() for row in rows] == ["1x", "4x"]
    tiles = [int(row[3].replace(",", "")) for row in rows]
    items = [int(row[5].replace(",", "")) for row in rows]
    assert 0 < tiles[0] < tiles[1] and 0 < items[0] <= items[1]
    assert "baseline (child importing the planner only)" in done.stdout
