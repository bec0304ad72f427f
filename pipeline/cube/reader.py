"""Read scenes' assets onto a grid: rasterio directly, many reads in flight, datasets reused.

Each band of each scene gives exactly what stackstac 0.5.1 gives (so composites stay
bit-identical): a file already on the target grid's CRS and pixel edges, at the grid's resolution
or an integer multiple of it, is read plainly (``ds.read`` of the window, upsampled by nearest on
read); any other file is warped through a ``WarpedVRT`` onto the grid. Either way it is read
masked as float32 and filled with NaN. Differences from a stackstac graph: no Dask inside a task,
reads of one call run concurrently on a thread pool (latency is hidden behind other reads), and
open datasets are pooled per process, so a file read by neighbouring chunks is opened once and its
header and cached blocks are reused.

GDAL's settings for cloud reads live in ``GDAL_OPTIONS`` and reach every worker through the
chunk settings (``configure_gdal``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.cube.read_retry import (
    DEFAULT_RETRY,
    ReadRetry,
    clear_cache,
    error_text,
    is_transient,
    read_with_retries,
)
from pipeline.geo.grid import Grid
from pipeline.search.items import ASSETS, SCL, AssetGrid, BadAssetError, ItemRef
from pipeline.search.sentinel2 import BANDS_20M

T = TypeVar("T")

# Cloud-read settings: no directory listing per open, no HEAD before a GET, one header read of
# 32 KB, consecutive ranges merged and the tiles of one read fetched in parallel, HTTP/2
# multiplexing, a 64 MiB process-wide cache of fetched ranges (headers of files that neighbouring
# chunks read again), and GDAL's own retry of 429/5xx. GDAL's cache of decoded blocks stays
# small: reads are whole blocks, each decoded once (``pipeline.cube.area``), so a large cache
# only holds memory (5 % of the machine's by default, per process) and faults in fresh pages.
GDAL_OPTIONS: dict[str, str] = {
    "GDAL_CACHEMAX": "64",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_USE_HEAD": "NO",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.jp2",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIRANGE": "PARALLEL",
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 2**20),
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
}


def configure_gdal(options: Mapping[str, str]) -> None:
    """Set GDAL configuration for this process (GDAL falls back to the environment)."""
    for key, value in options.items():
        os.environ[key] = str(value)


class FileFacts(NamedTuple):
    """What reads ask of an open file, asked of rasterio once per handle: rasterio works each
    out anew, holding the GIL (the CRS's EPSG code alone about 45 us), and a block's reads ask
    it of every file for every window, three times."""

    count: int
    dtype: str
    epsg: int | None
    transform: Affine
    height: int
    width: int
    block: tuple[int, int]  # (rows, cols) of the file's internal blocks
    mask_flags: list[MaskFlags]
    nodata: float | None

    @classmethod
    def of(cls, ds: rasterio.DatasetReader) -> FileFacts:
        return cls(
            ds.count,
            ds.dtypes[0],
            ds.crs.to_epsg() if ds.crs else None,
            ds.transform,
            ds.height,
            ds.width,
            ds.block_shapes[0],
            # For these GTiff reads every directory of the file while rasterio holds the GIL:
            # asked here, as the file opens, not amid the reader threads' block downloads.
            ds.mask_flag_enums[0],
            ds.nodata,
        )


class OpenFile(NamedTuple):
    """A pooled dataset and its facts."""

    ds: rasterio.DatasetReader
    facts: FileFacts


class DatasetPool:
    """Open rasterio datasets by href, handed to one thread at a time and kept for reuse.

    A rasterio dataset must not be read by two threads at once, so each reader takes a handle
    (an idle one, or a new one) and gives it back; at most ``max_idle`` idle handles are kept,
    each holding the last block it read, still compressed (1 to 2 MB for a Sentinel-2 band).
    """

    def __init__(self, max_idle: int = 256) -> None:
        self.max_idle = max_idle
        self._idle: OrderedDict[int, tuple[str, OpenFile]] = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def dataset(self, href: str) -> Iterator[OpenFile]:
        opened = self._take(href)
        if opened is None:
            ds = rasterio.open(href, sharing=False)
            try:
                opened = OpenFile(ds, FileFacts.of(ds))
            except BaseException:
                ds.close()
                raise
        try:
            yield opened
        except BaseException:
            opened.ds.close()  # a failed read may leave the handle in a bad state
            raise
        self._give(href, opened)

    def close(self) -> None:
        """Close every idle handle."""
        with self._lock:
            while self._idle:
                self._idle.popitem()[1][1].ds.close()

    def _take(self, href: str) -> OpenFile | None:
        with self._lock:
            for key, (url, opened) in self._idle.items():
                if url == href:
                    del self._idle[key]
                    return opened
        return None

    def _give(self, href: str, opened: OpenFile) -> None:
        with self._lock:
            self._idle[id(opened.ds)] = (href, opened)
            while len(self._idle) > self.max_idle:
                _, (_, oldest) = self._idle.popitem(last=False)
                oldest.ds.close()


POOL = DatasetPool()


def read_band(
    href: str,
    grid: Grid,
    window: Window | None,
    resampling: Resampling,
    pool: DatasetPool = POOL,
    expect: AssetGrid | None = None,
) -> np.ndarray:
    """One single-band asset on ``grid`` (the ``window`` of it, or all) as float32, NaN = nodata.

    What a 20 m band resampled by other than nearest needs. ``expect``: what the STAC metadata
    says of the file; a file that disagrees is refused.
    """
    height, width = grid.shape
    window = window or Window(0, 0, width, height)
    with pool.dataset(href) as (ds, facts):
        _check(facts, href, expect)
        factor = _aligned_factor(facts, grid, resampling)
        if factor:
            out = np.full((window.height, window.width), np.nan, np.float32)
            piece = _plain_piece(facts, grid, window, factor, 1)
            if piece is not None:
                data = piece.read(ds.read, out_dtype=np.float32, masked=True)
                out[piece.target] = np.ma.filled(data, fill_value=np.float32(np.nan))
            return out
        with _warped(ds, grid, resampling, add_alpha=facts.nodata is None) as vrt:
            data = vrt.read(window=window, out_dtype=np.float32, masked=True)
    # With no nodata in the file, the VRT's alpha band says where data is.
    data = np.ma.masked_array(data[0], mask=data[1] == 0) if data.shape[0] == 2 else data[0]
    return np.ma.filled(data, fill_value=np.float32(np.nan))


def read_digital(
    href: str,
    grid: Grid,
    window: Window,
    out: np.ndarray,
    pool: DatasetPool = POOL,
    expect: AssetGrid | None = None,
) -> None:
    """A single-band asset's digital numbers over ``window`` of ``grid`` into ``out``, nearest.

    ``out`` is ``window`` at the file's own pixel size when it is a multiple of the grid's
    (``window`` then on the file's pixel edges), or at the grid's; 0 wherever the file holds no
    data (its nodata value or mask) or does not reach, the one no-data value of Sentinel-2 L2A.
    """
    step = window.height // out.shape[0]
    with pool.dataset(href) as (ds, facts):
        _check(facts, href, expect)
        if facts.dtype not in ("uint8", "uint16"):
            raise BadAssetError(
                f"{href} holds {facts.dtype} values; Sentinel-2 L2A bands are uint16 digital "
                "numbers and SCL uint8 classes"
            )
        factor = _aligned_factor(facts, grid, Resampling.nearest)
        if factor:
            piece = _plain_piece(facts, grid, window, factor, step)
            if piece is None:
                out[...] = 0
                return
            _zero_outside(out, piece.target)
            data = out[piece.target]
            if piece.whole:
                ds.read(1, window=piece.source, out=data)
            else:
                data[...] = piece.read(ds.read)
            _zero_no_data(facts, data, lambda: piece.read(ds.read_masks))
            return
        with _warped(ds, grid, Resampling.nearest, nodata=0) as vrt:
            vrt.read(1, window=window, out=out)


class Placement(NamedTuple):
    """How a file sits on a grid: ``factor`` x ``factor`` grid pixels a file pixel (0 when only
    a warp puts it there), its top-left pixel at grid column ``col`` and row ``row``, and its
    internal blocks (what a read decodes whole) of ``block`` = (rows, cols) grid pixels."""

    factor: int
    col: int
    row: int
    block: tuple[int, int]


def placement(
    href: str, grid: Grid, pool: DatasetPool = POOL, expect: AssetGrid | None = None
) -> Placement:
    """Where the file at ``href`` sits on ``grid`` (``Placement``)."""
    with pool.dataset(href) as (_, facts):
        _check(facts, href, expect)
        factor = _aligned_factor(facts, grid, Resampling.nearest)
        if not factor:
            return Placement(0, 0, 0, (0, 0))
        rows, cols = facts.block
        return Placement(
            factor,
            round((facts.transform.c - grid.bounds[0]) / grid.resolution),
            round((grid.bounds[3] - facts.transform.f) / grid.resolution),
            (rows * factor, cols * factor),
        )


def asset_placement(
    ref: ItemRef, name: str, grid: Grid, sign_hrefs: bool = False, pool: DatasetPool = POOL
) -> Placement | None:
    """Where asset ``name`` of ``ref`` sits on ``grid``; None when it cannot be opened (the read
    that follows then says why: what GDAL remembers of the failure is forgotten, or it would
    answer that read with "does not exist" in place of the server's error)."""
    b = ASSETS.index(name)
    href = _signed(ref.hrefs[b]) if sign_hrefs else ref.hrefs[b]
    try:
        return placement(href, grid, pool, ref.grids[b] if ref.grids else None)
    except (RasterioError, OSError, BadAssetError):
        clear_cache(ref.hrefs[b])
        return None


def open_assets(
    refs: Sequence[ItemRef],
    grid: Grid,
    assets: Sequence[str],
    pool: DatasetPool,
    sign_hrefs: bool = False,
    concurrency: int = 16,
) -> None:
    """Open ``assets`` of every scene of ``refs`` into ``pool`` ahead of their reads, on the
    reader threads; a file that cannot be opened is left for its read to retry and report."""
    jobs = [(ref, name) for ref in refs for name in assets]
    list(
        reader_threads(concurrency).map(
            lambda job: asset_placement(*job, grid, sign_hrefs, pool), jobs
        )
    )


def _check(facts: FileFacts, href: str, expect: AssetGrid | None) -> None:
    if facts.count != 1:
        raise BadAssetError(f"{href} has {facts.count} bands; a Sentinel-2 asset has one")
    if expect is not None:
        expect.check(facts.epsg, facts.transform, (facts.height, facts.width))


def _zero_outside(out: np.ndarray, target: tuple[slice, slice]) -> None:
    """Set ``out`` to 0 but for ``target``: the part of it a file does not reach."""
    rows, cols = target
    out[: rows.start] = 0
    out[rows.stop :] = 0
    out[rows, : cols.start] = 0
    out[rows, cols.stop :] = 0


def _zero_no_data(facts: FileFacts, data: np.ndarray, masks: Callable[[], np.ndarray]) -> None:
    """Set to 0 what the file says is no data: its nodata value, or its mask where it has one."""
    flags = facts.mask_flags
    if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
        data[masks() == 0] = 0
    elif facts.nodata is not None and facts.nodata != 0:
        data[data == facts.nodata] = 0


@contextlib.contextmanager
def _warped(
    ds: rasterio.DatasetReader, grid: Grid, resampling: Resampling, **options
) -> Iterator[WarpedVRT]:
    """``ds`` warped onto ``grid`` through a WarpedVRT."""
    height, width = grid.shape
    with _VRT_LOCK:  # see _VRT_LOCK
        vrt = WarpedVRT(
            ds,
            sharing=False,
            resampling=resampling,
            crs=grid.epsg,
            transform=grid.transform,
            height=height,
            width=width,
            **options,
        )
    with vrt:
        yield vrt


# Building a WarpedVRT sets up its transformer (PROJ) with the GIL held; a thread inside GDAL
# that reports an error or debug message through rasterio's handler then waits for the GIL while
# holding GDAL's lock, and the builder waits for that lock: both hang. One builder at a time,
# and none at all for grids read plainly, keeps the reads of a chunk clear of it.
_VRT_LOCK = threading.Lock()


def _aligned_factor(facts: FileFacts, grid: Grid, resampling: Resampling) -> int:
    """k when the file is on ``grid``'s CRS with k x k target pixels per source pixel, edges on
    the grid's, and nearest (or k = 1) resampling: a plain read then gives what a WarpedVRT
    gives. 0 otherwise."""
    t, res = facts.transform, grid.resolution
    factor = round(t.a / res)
    aligned = (
        facts.epsg is not None
        and facts.epsg == grid.epsg
        and factor >= 1
        and t.b == 0
        and t.d == 0
        and t.a == factor * res
        and t.e == -factor * res
        and ((t.c - grid.bounds[0]) / res).is_integer()
        and ((grid.bounds[3] - t.f) / res).is_integer()
    )
    return factor if aligned and (factor == 1 or resampling == Resampling.nearest) else 0


@dataclass(frozen=True)
class _Piece:
    """Where ``window`` of the grid meets a file, read straight from it: the file pixels
    ``source`` read at ``shape`` (upsampled by nearest where larger), their part ``trim`` that
    lies in the window, and where that goes in the output (``target``)."""

    source: Window
    shape: tuple[int, int]
    trim: tuple[slice, slice]
    target: tuple[slice, slice]

    @property
    def whole(self) -> bool:
        """Whether the piece is the file pixels as they are: read straight into the output."""
        rows, cols = self.trim
        return (
            self.shape
            == (rows.stop - rows.start, cols.stop - cols.start)
            == (
                self.source.height,
                self.source.width,
            )
        )

    def read(self, read: Callable[..., np.ndarray], **options) -> np.ndarray:
        """``read`` (a dataset's ``read`` or ``read_masks``) of the piece, trimmed."""
        if self.shape == (self.source.height, self.source.width):
            return read(1, window=self.source, **options)[self.trim]
        data = read(
            1, window=self.source, out_shape=self.shape, resampling=Resampling.nearest, **options
        )
        return data[self.trim]


def _plain_piece(facts: FileFacts, grid: Grid, window: Window, k: int, step: int) -> _Piece | None:
    """How ``window`` of ``grid`` reads straight from the file (``k`` x ``k`` grid pixels a file
    pixel) into an output of a pixel per ``step`` x ``step`` grid pixels (``step`` 1, or ``k``
    with ``window`` on the file's pixel edges); None where the window misses the file."""
    # The window's edges in grid pixels counted from the file's top-left corner.
    col = window.col_off + round((grid.bounds[0] - facts.transform.c) / grid.resolution)
    row = window.row_off + round((facts.transform.f - grid.bounds[3]) / grid.resolution)
    c0, c1 = max(col, 0), min(col + window.width, facts.width * k)
    r0, r1 = max(row, 0), min(row + window.height, facts.height * k)
    if c0 >= c1 or r0 >= r1:
        return None
    # Whole file pixels covering it, read at k / step output pixels a file pixel and trimmed.
    s_c0, s_r0 = c0 // k, r0 // k
    s_c1, s_r1 = -(-c1 // k), -(-r1 // k)
    up = k // step
    rows, cols = (r1 - r0) // step, (c1 - c0) // step
    first_row, first_col = (r0 - s_r0 * k) // step, (c0 - s_c0 * k) // step
    out_row, out_col = (r0 - row) // step, (c0 - col) // step
    return _Piece(
        source=Window(s_c0, s_r0, s_c1 - s_c0, s_r1 - s_r0),
        shape=((s_r1 - s_r0) * up, (s_c1 - s_c0) * up),
        trim=(slice(first_row, first_row + rows), slice(first_col, first_col + cols)),
        target=(slice(out_row, out_row + rows), slice(out_col, out_col + cols)),
    )


def reader_threads(concurrency: int) -> ThreadPoolExecutor:
    """This process's ``concurrency`` reader threads, started once and kept for every call.

    GDAL keeps its HTTP connections per thread, so fresh threads for every block of months would
    connect again for every read; kept threads reuse them. Calls that run at once (the tasks of
    a Dask worker's threads) share the threads, so the bound on reads in flight is per process.
    """
    return threads_of("read", concurrency)


def threads_of(kind: str, count: int) -> ThreadPoolExecutor:
    """This process's ``count`` threads for ``kind`` of work, started once and kept."""
    key = (os.getpid(), kind, max(1, count))  # a forked child starts its own threads
    with _THREADS_LOCK:
        if key not in _THREADS:
            _THREADS[key] = ThreadPoolExecutor(key[2], thread_name_prefix=f"timesenclip-{kind}")
        return _THREADS[key]


_THREADS: dict[tuple[int, str, int], ThreadPoolExecutor] = {}
_THREADS_LOCK = threading.Lock()


def _signed(href: str) -> str:
    """A Planetary Computer href with a SAS token (cached per storage container and process)."""
    import planetary_computer

    return planetary_computer.sign(href)


class Buffers:
    """Arrays handed out again for every window a task reads, by name: fresh memory for each
    window costs page faults, and freeing it TLB shootdowns across the reader threads."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A C-contiguous ``shape`` array of ``dtype``, in memory the last one of ``name`` had."""
        size = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.size < size or flat.dtype != dtype:
            flat = self._flat[name] = np.empty(size, dtype)
        return flat[:size].reshape(shape)


# The assets read at 20 m where every scene allows it (``SceneRead.factor``), in ASSETS order.
COARSE = (*BANDS_20M, SCL)
FINE = tuple(name for name in ASSETS if name not in COARSE)


@dataclass
class SceneRead:
    """Scenes read over a window: ``(scenes, rows, cols)`` per asset, and what was left out.

    Digital numbers as stored, 0 wherever a scene holds no data: uint16 bands and uint8 SCL, or
    float32 with NaN for a 20 m band resampled other than by nearest. 10 m bands cover
    ``window`` a value per grid pixel; 20 m bands and SCL a value per ``factor`` x ``factor``
    grid pixels: 2 when every scene's 20 m files are read at their own pixels (``window`` is
    then widened to their pixel edges), else 1.
    """

    layers: dict[str, np.ndarray]
    used: list[ItemRef]
    skipped: list[dict] = field(default_factory=list)
    window: Window | None = None
    factor: int = 1


def read_scenes(
    refs: Sequence[ItemRef],
    grid: Grid,
    *,
    window: Window | None = None,
    resampling_of: Callable[[str], Resampling],
    on_bad_asset: str = "raise",
    concurrency: int = 16,
    sign_hrefs: bool = False,
    retry: ReadRetry = DEFAULT_RETRY,
    assets: Sequence[str] = ASSETS,
    buffers: Buffers | None = None,
    pool: DatasetPool = POOL,
) -> SceneRead:
    """``assets`` of every scene in ``refs`` over ``window`` of ``grid`` (or all of it), read
    ``concurrency`` at a time from ``pool``'s datasets, into ``buffers`` when given (what they
    held before is lost).

    Under ``on_bad_asset="raise"`` a failed read raises ``BadAssetError`` naming the item,
    asset, href and error; under ``"skip"`` the scene is left out and recorded in ``skipped``.
    Transient failures are retried first (``pipeline.cube.read_retry``).
    """
    window = window or Window(0, 0, grid.shape[1], grid.shape[0])
    failures: dict[int, dict] = {}

    def attempt(job: tuple[int, str], read: Callable[[str, AssetGrid | None], T]) -> T | None:
        i, name = job
        ref, b = refs[i], ASSETS.index(name)
        href = _signed(ref.hrefs[b]) if sign_hrefs else ref.hrefs[b]
        expect = ref.grids[b] if ref.grids else None
        try:
            return read_with_retries(
                lambda: read(href, expect), ref.hrefs[b], ref.label(name), retry
            )
        except (RasterioError, OSError, BadAssetError) as error:
            failures.setdefault(
                i,
                {
                    "id": ref.id,
                    "asset": ref.keys[b],
                    "href": ref.hrefs[b],
                    "reason": error_text(error),
                    "transient": is_transient(error, ref.hrefs[b]),
                },
            )
            return None

    threads = reader_threads(concurrency)
    jobs = [(i, name) for i in range(len(refs)) for name in assets]
    places = dict(
        zip(
            jobs,
            threads.map(lambda j: attempt(j, lambda h, e: placement(h, grid, pool, e)), jobs),
            strict=True,
        )
    )
    nearest = all(resampling_of(name) == Resampling.nearest for name in assets)
    found = {
        (p.factor, p.col % 2, p.row % 2)
        for j, p in places.items()
        if j[1] in COARSE and j[0] not in failures
    }
    factor = 2 if nearest and len(found) == 1 and next(iter(found))[0] == 2 else 1
    if factor == 2:
        window = _on_pixel_edges(window, *next(iter(found))[1:])
    buffers = buffers or Buffers()
    layers = {
        name: buffers.array(
            name,
            (len(refs), window.height // _step(name, factor), window.width // _step(name, factor)),
            _dtype(name, resampling_of(name)),
        )
        for name in assets
    }

    def read(job: tuple[int, str]) -> None:
        out, resampling = layers[job[1]][job[0]], resampling_of(job[1])

        def into(href: str, expect: AssetGrid | None) -> None:
            if out.dtype == np.float32:
                out[...] = read_band(href, grid, window, resampling, pool, expect)
            else:
                read_digital(href, grid, window, out, pool, expect)

        if job[0] not in failures:
            attempt(job, into)

    list(threads.map(read, jobs))
    if failures and on_bad_asset == "raise":
        first = failures[min(failures)]
        ref = refs[min(failures)]
        band = ASSETS[ref.keys.index(first["asset"])]
        advice = (
            f"The server kept failing after {retry.retries + 1} attempts: run the same command "
            "again later to resume, or raise cube.read_retries"
            if first["transient"]
            else "Check that the file or URL is reachable and is the asset the item describes"
        )
        raise BadAssetError(
            f"cannot read {ref.label(band)} at {first['href']}: {first['reason']}. {advice}; "
            "or set stac.on_bad_asset: skip to leave the item out."
        )
    keep = [i for i in range(len(refs)) if i not in failures]
    if failures:
        layers = {name: values[keep] for name, values in layers.items()}
    return SceneRead(layers, [refs[i] for i in keep], list(failures.values()), window, factor)


def _step(name: str, factor: int) -> int:
    return factor if name in COARSE else 1


def _dtype(name: str, resampling: Resampling) -> type:
    if name == SCL:
        return np.uint8
    return np.uint16 if resampling == Resampling.nearest else np.float32


def _on_pixel_edges(window: Window, col: int, row: int) -> Window:
    """``window`` widened to the edges of 2 x 2 grid pixels that start at ``(col, row)`` mod 2."""
    c0 = window.col_off - (window.col_off - col) % 2
    r0 = window.row_off - (window.row_off - row) % 2
    c1 = window.col_off + window.width
    r1 = window.row_off + window.height
    return Window(c0, r0, c1 - c0 + (c1 - col) % 2, r1 - r0 + (r1 - row) % 2)
