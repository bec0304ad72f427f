"""Composites where 20 m pixels are cut: by a scene's footprint, by no-data edges of its 10 m bands,
and by windows and grids that start half a 20 m pixel off. Computed at 20 m where that is exact
(``pipeline.cube.observations``) and kept in tokens on disk (``pipeline.cube.area``), they must
equal, bit for bit, the reference composite: every band on the 10 m grid (20 m bands by nearest),
the NaN-aware median of each month's valid observations."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from encoder.preprocess import BANDS
from fixtures.synthetic import write_synthetic_collection
from pipeline.cube.area import (
    BlockFiles,
    MemoryGate,
    StoredTokens,
    block_need,
    block_scenes,
    composite_area,
    stored_block,
    stored_chunk,
)
from pipeline.cube.composite import CubeOptions, composite_chunk, in_time_order, month_blocks
from pipeline.cube.lazy import build_cube
from pipeline.cube.reader import COARSE, FileFacts, asset_placement, read_scenes, threads_of
from pipeline.geo.grid import Grid
from pipeline.run import composite_tasks
from pipeline.search.items import ASSETS, item_ref
from pipeline.search.sentinel2 import BANDS_20M, DEFAULT_CLOUD_MASK
from pipeline.search.stac import EARTH_SEARCH_ASSETS

YEAR = 2023
SIZE = 48
DATES = [datetime.date(YEAR, 1, d) for d in (3, 8, 13, 18)] + [datetime.date(YEAR, 5, 9)]
FINE_KEYS = [EARTH_SEARCH_ASSETS[b] for b in BANDS if b not in BANDS_20M]


def _rewrite(asset: dict, data: np.ndarray, transform: Affine) -> None:
    """Write ``data`` over the asset's file, with the item saying so (proj fields)."""
    path = Path(asset["href"])
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(width=data.shape[1], height=data.shape[0], transform=transform)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    asset["proj:shape"] = list(data.shape)
    asset["proj:transform"] = list(transform)[:6]


@pytest.fixture(scope="module")
def edged(tmp_path_factory):
    """Five scenes, four in January: one whose 10 m bands lose a diagonal strip to no data, one
    whose 10 m files start 3 px (one and a half 20 m pixels) in, one whose 20 m bands and SCL
    have a no-data corner, one whole; a lone May scene."""
    written = write_synthetic_collection(
        tmp_path_factory.mktemp("edged"),
        shape=(SIZE, SIZE),
        dates=DATES,
        cloud_fraction=0.3,
        boa_offset_applied=None,
    )
    items = written.items
    rows, cols = np.mgrid[:SIZE, :SIZE]
    for key in FINE_KEYS:  # scene 0: a no-data diagonal, at 10 m, through 2 x 2 blocks
        asset = items[0]["assets"][key]
        with rasterio.open(asset["href"]) as src:
            data, transform = src.read(1), src.transform
        data[(rows + 2 * cols) % 23 < 3] = 0
        _rewrite(asset, data, transform)
    for key in FINE_KEYS:  # scene 1: its 10 m files begin 3 px in, 5 px down
        asset = items[1]["assets"][key]
        with rasterio.open(asset["href"]) as src:
            data, transform = src.read(1), src.transform
        _rewrite(asset, data[5:, 3:], transform * Affine.translation(3, 5))
    for key in [EARTH_SEARCH_ASSETS[b] for b in (*BANDS_20M, "SCL")]:  # scene 2: a corner
        asset = items[2]["assets"][key]
        with rasterio.open(asset["href"]) as src:
            data, transform = src.read(1), src.transform
        data[:7, :5] = 0
        _rewrite(asset, data, transform)
    return written, items


def reference(items: list[dict], grid: Grid, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """The rule by hand: each file placed on the 10 m grid (20 m pixels repeated), NaN where a
    file does not reach, numpy's nanmedian of each month's valid observations."""

    def on_grid(href: str) -> np.ndarray:
        out = np.zeros((window.height, window.width))
        with rasterio.open(href) as src:
            k = round(src.res[0] / grid.resolution)
            data = np.repeat(np.repeat(src.read(1), k, 0), k, 1).astype(float)
            col = round((src.transform.c - grid.bounds[0]) / grid.resolution) - window.col_off
            row = round((grid.bounds[3] - src.transform.f) / grid.resolution) - window.row_off
        r0, c0 = max(row, 0), max(col, 0)
        r1 = min(row + data.shape[0], window.height)
        c1 = min(col + data.shape[1], window.width)
        if r0 < r1 and c0 < c1:
            out[r0:r1, c0:c1] = data[r0 - row : r1 - row, c0 - col : c1 - col]
        return out

    months = np.array([int(item["properties"]["datetime"][5:7]) for item in items])
    values = np.stack(
        [
            np.stack([on_grid(item["assets"][EARTH_SEARCH_ASSETS[b]]["href"]) for b in BANDS])
            for item in items
        ]
    )
    scl = np.stack([on_grid(item["assets"]["scl"]["href"]) for item in items])
    valid = ~np.isin(scl, DEFAULT_CLOUD_MASK) & (scl != 0) & (values != 0).all(axis=1)
    offsets = np.array([item_ref(item).offset for item in items], float)
    values = values - offsets[:, None, None, None]
    values[~np.broadcast_to(valid[:, None], values.shape)] = np.nan
    composite = np.full((12, len(BANDS), window.height, window.width), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        for month in set(months):
            composite[month - 1] = np.nanmedian(values[months == month], axis=0)
    return composite, np.isfinite(composite[:, 0]).sum(axis=0)


def test_the_cases_are_there(edged):
    """The scenes do cut 20 m pixels: a 20 m pixel with valid data of scene 0 and 1 has an
    observation valid at some of its four 10 m pixels only; and they are read at 20 m."""
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    read = read_scenes(
        [item_ref(i) for i in items], grid, resampling_of=CubeOptions().resampling_of
    )
    assert read.factor == 2 and read.layers["B05"].shape[1:] == (SIZE // 2, SIZE // 2)
    window = Window(0, 0, SIZE, SIZE)
    fine = np.stack([read.layers[b] for b in BANDS if b not in BANDS_20M], axis=1)
    valid_fine = (fine != 0).all(axis=1).reshape(len(items), SIZE // 2, 2, SIZE // 2, 2)
    mixed = valid_fine.any(axis=(2, 4)) & ~valid_fine.all(axis=(2, 4))
    assert mixed[0].sum() > 20 and mixed[1].sum() > 20  # the diagonal, and the cut footprint
    composite, _ = reference(items, grid, window)
    january = composite[0]
    b05 = BANDS.index("B05")
    pairs = january[b05].reshape(SIZE // 2, 2, SIZE // 2, 2)
    differ = (pairs != pairs[:, :1, :, :1]) & np.isfinite(pairs)
    assert differ.any()  # some 20 m pixels do have 10 m pixels of different medians


@pytest.mark.parametrize(
    "window",
    [Window(0, 0, SIZE, SIZE), Window(1, 3, 29, 27), Window(6, 0, 20, 37)],
    ids=["whole", "odd", "even-odd"],
)
def test_a_chunk_equals_the_reference(edged, window):
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    cube = composite_chunk([item_ref(i) for i in items], grid, CubeOptions(), window)
    composite, valid = reference(items, grid, window)
    np.testing.assert_array_equal(cube.composite, composite)
    np.testing.assert_array_equal(cube.valid_months, valid)


def test_a_grid_half_a_20m_pixel_off_equals_the_reference(edged):
    """A grid whose pixels start on a 10 m edge between two 20 m ones: every 20 m pixel is
    split, and the 20 m bands are read on the grid's own pixels."""
    written, items = edged
    xmin, ymin, xmax, ymax = written.bounds
    grid = Grid(written.epsg, (xmin + 10, ymin + 30, xmax - 20, ymax - 10), 10.0)
    window = Window(0, 0, *reversed(grid.shape))
    cube = composite_chunk([item_ref(i) for i in items], grid, CubeOptions())
    np.testing.assert_array_equal(cube.composite, reference(items, grid, window)[0])
    lazy = build_cube(items, epsg=written.epsg, bounds=grid.bounds, year=YEAR, chunk_size=16)
    np.testing.assert_array_equal(lazy["composite"].values, cube.composite)


@pytest.mark.parametrize("threads", [1, 3], ids=["one thread", "strips on 3 threads"])
@pytest.mark.parametrize("budget", [2**30, 0], ids=["blocks", "smallest windows"])
def test_stored_tokens_equal_the_reference(edged, tmp_path, budget, threads):
    """The run's path: each block of months over an area, kept on disk, read back a chunk at a
    time, with windows the size of the files' blocks or as small as the budget makes them, and
    each window reduced whole or in strips of rows on several threads (the exceptions, 20 m
    pixels cut by a 10 m edge, fall in several strips)."""
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    refs = [item_ref(i) for i in items]
    options = CubeOptions()
    area = Window(2, 4, 44, 40)
    stored = [
        composite_area(refs, grid, area, i, options, tmp_path, budget, threads)
        for i in range(len(month_blocks(options)))
    ]
    assert {s.folder is None for s in stored} == {True, False}  # months without scenes
    for window in (Window(2, 4, 16, 16), Window(18, 20, 16, 24), Window(34, 36, 12, 8)):
        cube = stored_chunk(stored, refs, grid, window, options)
        composite, valid = reference(items, grid, window)
        np.testing.assert_array_equal(cube.composite, composite)
        np.testing.assert_array_equal(cube.valid_months, valid)
        assert sorted(r.id for r in cube.used) == sorted(r.id for r in refs)


def test_blocks_of_months_share_one_memory_budget():
    """What fits the budget runs at once; a share that does not waits for one to end; a need
    above the whole budget gets the whole budget."""
    gate = MemoryGate(100)
    order = []
    with gate.share(30) as first, gate.share(40) as second:
        assert (first, second) == (30, 40)
        ran = threading.Event()

        def third():
            with gate.share(60) as held:
                order.append(held)
                ran.set()

        waiting = threading.Thread(target=third)
        waiting.start()
        assert not ran.wait(0.3)  # 30 + 40 + 60 > 100
        order.append("released")
    assert ran.wait(10)
    waiting.join()
    assert order == ["released", 60]
    with gate.share(10**9) as everything:
        assert everything == 100


def test_a_block_asks_for_windows_of_whole_blocks_of_its_scenes(edged):
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    refs, options = [item_ref(i) for i in items], CubeOptions()
    area = Window(0, 0, SIZE, SIZE)
    needs = [
        block_need(block_scenes(refs, grid, area, i, options))
        for i in range(len(month_blocks(options)))
    ]
    per_scene = 2048 * 2048 * 14 / 4 + 1024 * 1024 * 12
    assert needs[0] == 4 * per_scene and needs[4] == per_scene  # January: 4 scenes, May: 1
    assert sum(needs) == len(items) * per_scene


def test_a_block_opens_its_files_once_before_it_reads(edged, tmp_path, monkeypatch):
    """A block's files are opened as its ``BlockFiles`` is made (in a run, before it waits for
    its memory share); its reads open the 10 m files no more, and a 20 m file again only for
    each further outer window (closed after each, so as not to hold its last block)."""
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    refs, options = [item_ref(i) for i in items], CubeOptions()
    area = Window(0, 0, SIZE, SIZE)
    january = in_time_order(r for r in refs if r.month == 1)
    first = asset_placement(january[0], COARSE[0], grid)  # where the outer windows start
    opened = []
    real_open = rasterio.open

    def counted(href, *args, **kwargs):
        opened.append(href)
        return real_open(href, *args, **kwargs)

    facts = []  # what reads ask of a file, asked of rasterio once per open
    real_facts = FileFacts.of

    def asked(ds):
        facts.append(ds.name)
        return real_facts(ds)

    monkeypatch.setattr(rasterio, "open", counted)
    monkeypatch.setattr(FileFacts, "of", asked)
    files = BlockFiles(refs, grid, area, 0, options)
    assert sorted(opened) == sorted(href for r in january for href in r.hrefs)
    assert sorted(facts) == sorted(opened)
    opened.clear()
    facts.clear()
    stored = composite_area(refs, grid, area, 0, options, tmp_path, files=files)
    assert sorted(facts) == sorted(opened)
    rows, cols = first.block
    outer = {
        ((w.row_off - first.row) // rows, (w.col_off - first.col) // cols) for w in stored.windows
    }
    coarse = {r.hrefs[ASSETS.index(name)] for r in january for name in COARSE}
    assert set(opened) <= coarse
    assert len(opened) == (len(outer) - 1) * len(coarse)


def test_a_block_that_fails_before_it_reads_closes_the_files_it_opened(
    edged, tmp_path, monkeypatch
):
    """Stopped while it waits for its memory share (here: an interrupt), a block's task closes
    the files it opened ahead, rather than leaving them open until the worker exits."""
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    opened = []
    real_open = rasterio.open

    def kept(href, *args, **kwargs):
        opened.append(real_open(href, *args, **kwargs))
        return opened[-1]

    def interrupted(need):
        raise KeyboardInterrupt

    monkeypatch.setattr(rasterio, "open", kept)
    monkeypatch.setattr(composite_tasks._MEMORY, "share", interrupted)
    plan = SimpleNamespace(tile=SimpleNamespace(grid=grid), folder=tmp_path / "tile")
    refs = [item_ref(i) for i in items]
    with pytest.raises(KeyboardInterrupt):
        composite_tasks.composite_tile(plan, refs, Window(0, 0, SIZE, SIZE), 0, CubeOptions(), ())
    assert opened and all(ds.closed for ds in opened)


def test_a_stored_block_is_found_again_for_the_same_arguments_only(edged, tmp_path):
    """What a rerun of a block's task finds on disk: the block as it was stored, for the same
    scenes, area and options; nothing for others, nor for a block that left a scene out for a
    failure that may pass, nor once its record is gone."""
    written, items = edged
    grid = Grid(written.epsg, written.bounds, 10.0)
    refs, options = [item_ref(i) for i in items], CubeOptions()
    area = Window(0, 0, SIZE, SIZE)
    assert stored_block(refs, grid, area, 0, options, tmp_path) is None
    stored = composite_area(refs, grid, area, 0, options, tmp_path)
    assert stored.windows and stored.used
    assert stored_block(refs, grid, area, 0, options, tmp_path) == stored
    assert stored_block(refs[1:], grid, area, 0, options, tmp_path) is None
    # Made of its own scenes: a scene of other months changes nothing of it.
    elsewhere = next(r for r in refs if r.month not in month_blocks(options)[0])
    others = [r for r in refs if r is not elsewhere]
    assert stored_block(others, grid, area, 0, options, tmp_path) == stored
    assert stored_block(refs, grid, Window(0, 0, 64, 64), 0, options, tmp_path) is None
    other = CubeOptions(cloud_mask=(9,))
    assert stored_block(refs, grid, area, 0, other, tmp_path) is None
    record_path = stored.folder / "block.json"
    record = json.loads(record_path.read_text())
    failed = {"id": refs[0].id, "asset": "B04", "href": "x", "reason": "503", "transient": True}
    record_path.write_text(json.dumps({**record, "skipped": [failed]}))
    assert stored_block(refs, grid, area, 0, options, tmp_path) is None  # to be read again
    record_path.unlink()
    assert stored_block(refs, grid, area, 0, options, tmp_path) is None


def test_a_tiles_blocks_are_removed_on_a_thread_its_process_waits_for(tmp_path):
    """A tile's stored blocks go (and its folder once empty) on a thread of their own, which the
    process finishes before it exits: none is left behind by a worker that closes at once."""
    tile = tmp_path / "composites" / "tile"
    blocks = []
    for index in range(3):
        folder = tile / f"block-{index:02d}" / "r0-c0"
        folder.mkdir(parents=True)
        (folder / "fine.npy").write_bytes(bytes(2**20))
        blocks.append(StoredTokens(index, Window(0, 0, 8, 8), folder.parent))
    composite_tasks.remove_blocks([*blocks[:2], StoredTokens(3, Window(0, 0, 8, 8), None)])
    assert [p.name for p in tile.iterdir() if not p.name.startswith(".")] == ["block-02"]
    # A rerun's block stored under a removed one's name meanwhile is its own, and stays.
    (tile / "block-00").mkdir()
    threads_of("remove", 1).submit(lambda: None).result()  # after the removal
    assert sorted(p.name for p in tile.iterdir()) == ["block-00", "block-02"]
    (tile / "block-00").rmdir()
    script = (
        "import sys; from pathlib import Path; from rasterio.windows import Window; "
        "from pipeline.cube.area import StoredTokens; "
        "from pipeline.run.composite_tasks import remove_blocks; "
        "remove_blocks([StoredTokens(2, Window(0, 0, 8, 8), Path(sys.argv[1]))])"
    )
    subprocess.run([sys.executable, "-c", script, str(blocks[2].folder)], check=True, timeout=120)
    assert not tile.exists()
