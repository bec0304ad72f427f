"""The task that composites a tile's block of months, for the tile's chunk tasks to read.

Apart from the chunk tasks (``pipeline.run.worker_tasks``) because it needs no torch: a worker
imports this as it starts and takes the first blocks of a run while torch is still loading
(``pipeline.run.worker_start``). Pure of its arguments and of the files it writes itself, so the
scheduler can rerun it on any worker after a loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rasterio.windows import Window

from pipeline.cube.area import (
    BlockFiles,
    MemoryGate,
    StoredTokens,
    block_need,
    composite_area,
    stored_block,
)
from pipeline.cube.composite import CubeOptions
from pipeline.cube.reader import configure_gdal, threads_of
from pipeline.plan.scenes import ChunkTask, TilePlan
from pipeline.search.items import ItemRef
from timesenclip.common.atomic import set_aside


@dataclass
class BlockReport:
    """A block of months of a tile's area, composited and stored for its chunk tasks."""

    stored: StoredTokens
    seconds: float


# Blocks of months run at once in a worker process as far as one budget holds their windows: a
# block of few scenes leaves room for another (the cores stay busy), one of many takes it all.
_MEMORY = MemoryGate()


def worker_threads() -> int | None:
    """Task slots of the Dask worker running this task, or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def composites_area(tasks: Sequence[ChunkTask]) -> Window | None:
    """The box of tile pixels whose composites ``tasks`` still need: those of every chunk with
    scenes and pixels in the region and no piece yet; None when no chunk needs any."""
    needed = [
        t.chunk
        for t in tasks
        if t.items and (t.inside is None or t.inside.any()) and not t.piece.exists()
    ]
    if not needed:
        return None
    row, col = min(c.row for c in needed), min(c.col for c in needed)
    bottom, right = max(c.row + c.height for c in needed), max(c.col + c.width for c in needed)
    return Window(col, row, right - col, bottom - row)


def composite_tile(
    plan: TilePlan,
    refs: Sequence[ItemRef],
    area: Window,
    index: int,
    cube: CubeOptions,
    gdal: tuple[tuple[str, str], ...],
) -> BlockReport:
    """Block ``index`` of months of the scenes ``refs`` over ``area`` of the tile, stored for
    its chunk tasks (``pipeline.cube.area``) in the scratch space of this worker's machine;
    found there when already stored for the same arguments (its task run again after its
    worker was lost), and then not composited again.

    Given the run's ``cube`` options and ``gdal`` settings, not its ``ChunkSettings``, whose
    plans need torch to unpickle."""
    grid, folder = plan.tile.grid, composites_path(plan.folder)
    found = stored_block(refs, grid, area, index, cube, folder)
    if found is not None:
        return BlockReport(found, 0.0)
    configure_gdal(dict(gdal))
    start = time.perf_counter()
    # Its files opened before its share: while another block holds the memory (BlockFiles).
    files = BlockFiles(refs, grid, area, index, cube)
    seconds = time.perf_counter() - start  # the time it waits for memory is no stage's
    # Closed here too, should the block fail (or be cancelled) before it reads.
    with files, _MEMORY.share(block_need(files.scenes)) as budget:
        start = time.perf_counter()
        stored = composite_area(
            refs,
            grid,
            area,
            index,
            cube,
            folder,
            budget,
            threads=worker_threads() or 1,
            files=files,
        )
        seconds += time.perf_counter() - start
    return BlockReport(stored, seconds)


def remove_blocks(blocks: Sequence[StoredTokens]) -> None:
    """Remove stored blocks of months, and their tile's folder once empty, on a thread of their
    own: on a file system mounted with online discard (common on cloud machines) deleting a GB
    of them waits about a second for the disk, which the tile's maps need not wait for. The
    process waits for it as it exits (``threads_of``' threads finish their work first).

    Each block's folder is first renamed out of the way, here: a block of a rerun stored under
    the same name meanwhile is not what the thread deletes."""
    gone = []
    for block in blocks:
        if block.folder is not None:
            with contextlib.suppress(OSError):  # removed already, by an earlier tile task
                gone.append(set_aside(block.folder))
    if gone:
        threads_of("remove", 1).submit(_remove, gone)


def _remove(folders: Sequence[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the tile's folder, left empty by its last block
            folder.parent.rmdir()


def composites_path(folder: Path) -> Path:
    """Where the blocks of months of the tile with scratch ``folder`` wait for its chunk tasks:
    beside the Dask worker's local directory (where Dask spills memory), so the other workers
    of its machine (or job) find them too, else in the system's temporary folder. Composites are
    tens of times the size of the maps: they stay off the output disk."""
    try:
        from distributed import get_worker

        space = Path(get_worker().local_directory).parent
    except (ImportError, ValueError):
        space = Path(tempfile.gettempdir())
    return space / "timesenclip-composites" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
