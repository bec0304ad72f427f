"""Composites of a whole area with each COG block decoded once: what a tile's chunks read.

Read chunk by chunk, a block is decoded again for every chunk it meets: a 512-px chunk meets on
average 2.25 of a 10 m band's 1024-px blocks and 1.56 of a 20 m band's (1024 pixels of 20 m
span 2048 of the grid), so it decodes 9 and 25 times the pixels it uses. Here one task per block
of months composites a tile's area in windows on the scenes' own blocks: the 20 m bands and SCL
of a 20 m block's footprint are read once, the 10 m blocks inside it one after the other. The
tokens go to disk (``StoredTokens``), from where each chunk takes its window (``stored_chunk``).
Memory follows a window and the scenes of one block of months, never the area: windows shrink
below a block (which is then decoded more than once) only where a block of months holds too
many scenes for the task's ``budget``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from encoder.conventions import BANDS
from pipeline.cube.composite import (
    ChunkCube,
    CubeOptions,
    in_time_order,
    month_blocks,
    pixels_met,
    read_window,
    reduce_window,
    token_months,
)
from pipeline.cube.reader import (
    COARSE,
    FINE,
    Buffers,
    DatasetPool,
    SceneRead,
    asset_placement,
    open_assets,
    threads_of,
)
from pipeline.cube.tokens import Tokens, load_array
from pipeline.geo.grid import Grid
from pipeline.search.items import ItemRef
from timesenclip.common.atomic import scratch_path

# Bytes a window holds per grid pixel and scene: 10 m bands with their masks, and 20 m bands
# with SCL and their mask at 2 x 2 grid pixels a value.
_FINE_BYTES = 12
_COARSE_BYTES = 14 / 4
_SMALLEST = 256  # windows are not cut below this many pixels a side
DEFAULT_BUDGET = 2**30
# Blocks of Sentinel-2 COGs as Earth Search and Planetary Computer tile them (1024 px), in grid
# pixels: what a block of months asks of the budget before its files are opened.
_TYPICAL_BLOCKS = ((2048, 2048), (1024, 1024))


class MemoryGate:
    """Blocks of months running at once in a process, as many as ``budget`` bytes hold: each
    waits for its share (``need``, at most the whole budget) and cuts its windows to it."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._free = budget
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def share(self, need: int) -> Iterator[int]:
        """Wait until ``need`` bytes (at most the budget) are free; yield them while held."""
        need = min(need, self.budget)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= need)
            self._free -= need
        try:
            yield need
        finally:
            with self._changed:
                self._free += need
                self._changed.notify_all()


def block_need(scenes: Sequence[ItemRef]) -> int:
    """Bytes a block of months of ``scenes`` (its own: :func:`block_scenes`) holds at most with
    windows of whole COG blocks (as Sentinel-2 COGs are tiled): what it asks of a
    :class:`MemoryGate`."""
    return round(_window_bytes(len(scenes), *_TYPICAL_BLOCKS))


def block_scenes(
    refs: Sequence[ItemRef], grid: Grid, area: Window, index: int, options: CubeOptions
) -> list[ItemRef]:
    """Those of ``refs`` that block ``index`` of months over ``area`` reads, in time order."""
    block = month_blocks(options)[index]
    inside = grid.window(area.row_off, area.col_off, area.height, area.width)
    return in_time_order([r for r in refs if r.month in block and r.meets(inside)])


class BlockFiles(contextlib.AbstractContextManager):
    """The files of a block of months' scenes over an area, opened when made.

    Made before the block's memory share (``MemoryGate``), so that a block waiting for memory
    opens its files (hundreds of headers, parsed holding the GIL) while the block that holds
    the memory reads and reduces, and starts reading as soon as its share is granted. Only this
    block reads its scenes. The 20 m files are read once for each outer window and closed after
    (an idle handle holds the last block it read, still compressed: 1 to 2 MB); the 10 m ones
    are read once for each of their blocks and kept open.
    """

    def __init__(
        self,
        refs: Sequence[ItemRef],
        grid: Grid,
        area: Window,
        index: int,
        options: CubeOptions,
    ) -> None:
        self.scenes = block_scenes(refs, grid, area, index, options)
        self.coarse = DatasetPool(max_idle=len(COARSE) * len(self.scenes))
        self.fine = DatasetPool(max_idle=len(FINE) * len(self.scenes))
        for assets, pool in ((COARSE, self.coarse), (FINE, self.fine)):
            open_assets(
                self.scenes, grid, assets, pool, options.sign_hrefs, options.read_concurrency
            )

    def __exit__(self, *exc) -> None:
        self.coarse.close()
        self.fine.close()


@dataclass(frozen=True)
class StoredTokens:
    """A block of months' tokens over ``area`` of a grid, on disk, and what went into them.

    A folder of ``folder`` per window of ``windows`` (which cover ``area``): its ``Tokens``, and
    ``months.npy``, ``(h, w)`` uint8, how many months of the block have a valid observation.
    ``folder`` is None when no scene meets the area in those months.
    """

    index: int  # of the block of months, in ``month_blocks``
    area: Window
    folder: Path | None
    windows: tuple[Window, ...] = ()
    used: tuple[str, ...] = ()
    skipped: tuple[dict, ...] = ()

    def path(self, window: Window) -> Path:
        return self.folder / f"r{window.row_off}-c{window.col_off}"


# Beside a stored block's windows: what it was made of and what it holds, written last.
_RECORD = "block.json"


def _block_folder(folder: Path, index: int) -> Path:
    """Where block ``index`` of months is stored in ``folder``."""
    return folder / f"block-{index:02d}"


def _block_key(
    scenes: Sequence[ItemRef], grid: Grid, area: Window, index: int, options: CubeOptions
) -> str:
    """What a block of months is made of (``scenes``: its own, :func:`block_scenes`): it is found
    again for these same arguments only. Of its own scenes, not the run's: the repr of
    hundreds of scenes held the GIL for milliseconds a block."""
    return hashlib.sha256(repr((index, area, grid, tuple(scenes), options)).encode()).hexdigest()


def stored_block(
    refs: Sequence[ItemRef],
    grid: Grid,
    area: Window,
    index: int,
    options: CubeOptions,
    folder: Path,
) -> StoredTokens | None:
    """Block ``index`` as ``composite_area`` left it in ``folder`` for these same arguments,
    when it is there whole: a block's task run again after its worker was lost (as batch jobs'
    workers are, at their lifetime) finds it on that machine instead of compositing it again.
    None where it is not, or where it left a scene out for a failure that may pass."""
    path = _block_folder(folder, index)
    try:
        record = json.loads((path / _RECORD).read_text())
    except (OSError, ValueError):
        return None
    transient = any(skip.get("transient") for skip in record.get("skipped", ()))
    scenes = block_scenes(refs, grid, area, index, options)
    if record.get("key") != _block_key(scenes, grid, area, index, options) or transient:
        return None
    windows = tuple(Window(*w) for w in record["windows"])
    return StoredTokens(index, area, path, windows, tuple(record["used"]), tuple(record["skipped"]))


def composite_area(
    refs: Sequence[ItemRef],
    grid: Grid,
    area: Window,
    index: int,
    options: CubeOptions,
    folder: Path,
    budget: int = DEFAULT_BUDGET,
    threads: int = 1,
    files: BlockFiles | None = None,
) -> StoredTokens:
    """The tokens of block ``index`` of months (``month_blocks(options)``) of the scenes in
    ``refs`` over ``area`` of ``grid``, stored in a folder of ``folder`` of their own (replaced
    whole when it exists). Medians run on ``threads`` threads, reads on the reader's.

    A scene left out under ``on_bad_asset="skip"`` (its read failed) is left out of the rest of
    the area too; ``skipped`` names it once. ``files``: the block's files opened ahead
    (``BlockFiles``), else opened here.
    """
    block = month_blocks(options)[index]
    files = files or BlockFiles(refs, grid, area, index, options)
    scenes = files.scenes
    if not scenes:
        return StoredTokens(index, area, None)
    skipped: list[dict] = []
    left_out: set[str] = set()
    windows: list[Window] = []
    coarse_buffers, fine_buffers = Buffers(), Buffers()
    folder = _block_folder(folder, index)
    with scratch_path(folder) as scratch, files, _Writer() as writer:
        scratch.mkdir()
        stored = StoredTokens(index, area, scratch)
        for outer, inner_grid in _windows(scenes, grid, area, options, budget, files):
            here = _meeting(_without(scenes, left_out), grid, outer)
            coarse = read_window(here, grid, outer, options, COARSE, coarse_buffers, files.coarse)
            files.coarse.close()
            skipped += coarse.skipped
            left_out |= {skip["id"] for skip in coarse.skipped}
            for inner in _cells(coarse.window, *inner_grid):
                here = _meeting(_without(coarse.used, left_out), grid, inner)
                if not here:
                    continue  # no scene: NaN, as where no window is stored
                fine = read_window(here, grid, inner, options, FINE, fine_buffers, files.fine)
                skipped += fine.skipped
                left_out |= {skip["id"] for skip in fine.skipped}
                read = _joined(coarse, fine, inner)
                tokens, has_data = reduce_window(read, options, block, threads)
                writer.save(tokens, has_data, stored.path(inner))
                windows.append(inner)
        writer.wait()
        used = tuple(r.id for r in _without(scenes, left_out))
        record = {
            "key": _block_key(scenes, grid, area, index, options),
            "windows": [list(w.flatten()) for w in windows],
            "used": used,
            "skipped": skipped,
        }
        (scratch / _RECORD).write_text(json.dumps(record))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(scratch, folder)
    return StoredTokens(index, area, folder, tuple(windows), used, tuple(skipped))


class _Writer(contextlib.AbstractContextManager):
    """Each window's tokens written to disk on a thread of their own while the next window is
    read (numpy's writes let go of the GIL); every write done when the block leaves."""

    def __init__(self) -> None:
        self._pending: list[Future] = []

    def save(self, tokens: Tokens, has_data: np.ndarray, path: Path) -> None:
        self._pending.append(threads_of("write", 1).submit(_save, tokens, has_data, path))

    def wait(self) -> None:
        """Until every window is written; raises the first failure."""
        for pending in self._pending:
            pending.result()

    def __exit__(self, *exc) -> None:
        wait(self._pending)  # no write outlives the block's scratch folder


def _save(tokens: Tokens, has_data: np.ndarray, path: Path) -> None:
    tokens.save(path)
    np.save(path / "months.npy", has_data.sum(axis=0, dtype=np.uint8))


def _without(scenes: Sequence[ItemRef], ids: set[str]) -> list[ItemRef]:
    return [r for r in scenes if r.id not in ids]


def _meeting(scenes: Sequence[ItemRef], grid: Grid, window: Window) -> list[ItemRef]:
    """The scenes whose footprint meets ``window`` of ``grid``."""
    part = grid.window(window.row_off, window.col_off, window.height, window.width)
    return [r for r in scenes if r.meets(part)]


def all_here(stored: Sequence[StoredTokens]) -> bool:
    """Whether every stored block's files can be read here (they are written where their task
    ran: on another machine, or lost with a worker, they are not)."""
    return all(block.folder is None or block.folder.is_dir() for block in stored)


def stored_chunk(
    stored: Sequence[StoredTokens],
    refs: Sequence[ItemRef],
    grid: Grid,
    window: Window,
    options: CubeOptions,
) -> ChunkCube:
    """``window`` of ``grid`` taken from the stored blocks of months, as ``composite_chunk``
    gives it for the scenes ``refs`` that meet it (skips counted in its own pixels)."""
    composite = np.full(
        (len(token_months(options)), len(BANDS), window.height, window.width), np.nan, np.float32
    )
    valid = np.zeros((window.height, window.width), np.uint8)
    for block in stored:
        first = 0 if options.mask_mode == "reference" else block.index
        for part in block.windows:
            common = _intersection(window, part)
            if common is None:
                continue
            source, target = _within(common, part), _within(common, window)
            tokens = Tokens.load(block.path(part)).full(*source)
            composite[(slice(first, first + len(tokens)), slice(None), *target)] = tokens
            valid[target] += load_array(block.path(part) / "months.npy", mmap_mode="r")[source]
    by_id = {r.id: r for r in refs}
    used = {i for block in stored for i in block.used}
    skipped = [
        {**skip, "pixels": pixels_met(by_id[skip["id"]], grid, window)}
        for block in stored
        for skip in block.skipped
        if skip["id"] in by_id
    ]
    return ChunkCube(composite, valid, [r for r in refs if r.id in used], skipped)


def _windows(
    scenes: Sequence[ItemRef],
    grid: Grid,
    area: Window,
    options: CubeOptions,
    budget: int,
    files: BlockFiles,
) -> list[tuple[Window, tuple[Window, tuple[int, int]]]]:
    """``(outer window, (origin, size) of its inner windows)``: ``area`` cut on the first
    scene's 20 m blocks, each of those on its 10 m blocks, as large as ``budget`` allows for
    ``scenes``. A window smaller than a block still decodes the whole block.

    Without blocks on the grid (files only a warp puts there, or a first scene that cannot be
    read), 512-px windows."""
    fine, coarse = (
        asset_placement(scenes[0], name, grid, options.sign_hrefs, pool)
        for name, pool in ((FINE[0], files.fine), (COARSE[0], files.coarse))
    )
    if not (fine and fine.factor and coarse and coarse.factor):
        size = (512, 512)
        return [(w, (area, size)) for w in _cells(area, area, size)]
    outer, inner = coarse.block, fine.block
    while _window_bytes(len(scenes), outer, inner) > budget:
        if max(inner) > _SMALLEST:
            inner = _halved(inner)
        elif max(outer) > _SMALLEST:
            outer = _halved(outer)
            inner = (min(inner[0], outer[0]), min(inner[1], outer[1]))
        else:
            break
    inner_origin = Window(fine.col, fine.row, 1, 1)
    cells = _cells(area, Window(coarse.col, coarse.row, 1, 1), outer)
    return [(w, (inner_origin, inner)) for w in cells]


def _window_bytes(scenes: int, outer: tuple[int, int], inner: tuple[int, int]) -> float:
    """Bytes an ``outer`` window of 20 m layers and an ``inner`` one of 10 m layers hold."""
    return scenes * (_area(outer) * _COARSE_BYTES + _area(inner) * _FINE_BYTES)


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _halved(size: tuple[int, int]) -> tuple[int, int]:
    rows, cols = size
    return (rows // 2, cols) if rows >= cols else (rows, cols // 2)


def _cells(window: Window, origin: Window, size: tuple[int, int]) -> list[Window]:
    """``window`` cut by the lines of a grid of ``size`` = (rows, cols) cells through
    ``origin``'s top-left corner."""
    rows, cols = size
    out = []
    r = window.row_off - (window.row_off - origin.row_off) % rows
    while r < window.row_off + window.height:
        c = window.col_off - (window.col_off - origin.col_off) % cols
        while c < window.col_off + window.width:
            cell = _intersection(Window(c, r, cols, rows), window)
            if cell is not None:
                out.append(cell)
            c += cols
        r += rows
    return out


def _intersection(a: Window, b: Window) -> Window | None:
    c0, r0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    return Window(c0, r0, c1 - c0, r1 - r0) if c0 < c1 and r0 < r1 else None


def _within(inner: Window, outer: Window) -> tuple[slice, slice]:
    """Where ``inner`` sits in an array of ``outer``."""
    top, left = inner.row_off - outer.row_off, inner.col_off - outer.col_off
    return slice(top, top + inner.height), slice(left, left + inner.width)


def _joined(coarse: SceneRead, fine: SceneRead, inner: Window) -> SceneRead:
    """The scenes of ``fine`` with the 20 m layers of ``coarse`` under its window ``inner``."""
    k = coarse.factor
    at = {r.id: i for i, r in enumerate(coarse.used)}
    keep = [at[r.id] for r in fine.used]
    rows, cols = _within(inner, coarse.window)
    part = (slice(rows.start // k, rows.stop // k), slice(cols.start // k, cols.stop // k))
    layers = dict(fine.layers)
    for name, values in coarse.layers.items():
        kept = values if len(keep) == len(coarse.used) else values[keep]
        layers[name] = kept[(slice(None), *part)]
    return SceneRead(layers, fine.used, fine.skipped, inner, k)
