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
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.cube.read_retry import (
    DEFAULT_RETRY,
    ReadRetry,
    error_text,
    is_transient,
    read_with_retries,
)
from pipeline.geo.grid import Grid
from pipeline.search.items import ASSETS, AssetGrid, BadAssetError, ItemRef

# Cloud-read settings: no directory listing per open, no HEAD before a GET, one header read of
# 32 KB, consecutive ranges merged and the tiles of one read fetched in parallel, HTTP/2
# multiplexing, a 64 MiB process-wide cache of fetched ranges (headers of files that neighbouring
# chunks read again), and GDAL's own retry of 429/5xx.
GDAL_OPTIONS: dict[str, str] = {
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


class DatasetPool:
    """Open rasterio datasets by href, handed to one thread at a time and kept for reuse.

    A rasterio dataset must not be read by two threads at once, so each reader takes a handle
    (an idle one, or a new one) and gives it back; at most ``max_idle`` idle handles are kept.
    """

    def __init__(self, max_idle: int = 256) -> None:
        self.max_idle = max_idle
        self._idle: OrderedDict[int, tuple[str, rasterio.DatasetReader]] = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def dataset(self, href: str) -> Iterator[rasterio.DatasetReader]:
        ds = self._take(href)
        if ds is None:
            ds = rasterio.open(href, sharing=False)
        try:
            yield ds
        except BaseException:
            ds.close()  # a failed read may leave the handle in a bad state
            raise
        self._give(href, ds)

    def _take(self, href: str) -> rasterio.DatasetReader | None:
        with self._lock:
            for key, (url, ds) in self._idle.items():
                if url == href:
                    del self._idle[key]
                    return ds
        return None

    def _give(self, href: str, ds: rasterio.DatasetReader) -> None:
        with self._lock:
            self._idle[id(ds)] = (href, ds)
            while len(self._idle) > self.max_idle:
                _, (_, oldest) = self._idle.popitem(last=False)
                oldest.close()


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

    ``expect``: what the STAC metadata says of the file; a file that disagrees is refused.
    """
    height, width = grid.shape
    window = window or Window(0, 0, width, height)
    with pool.dataset(href) as ds:
        if ds.count != 1:
            raise BadAssetError(f"{href} has {ds.count} bands; a Sentinel-2 asset has one")
        if expect is not None:
            expect.check(ds.crs.to_epsg() if ds.crs else None, ds.transform, ds.shape)
        factor = _aligned_factor(ds, grid, resampling)
        if factor:
            return _plain_read(ds, grid, window, factor)
        target = {"crs": grid.epsg, "transform": grid.transform, "height": height}
        with _VRT_LOCK:  # see _VRT_LOCK
            vrt = WarpedVRT(
                ds,
                sharing=False,
                resampling=resampling,
                add_alpha=ds.nodata is None,
                width=width,
                **target,
            )
        with vrt:
            data = vrt.read(window=window, out_dtype=np.float32, masked=True)
    # With no nodata in the file, the VRT's alpha band says where data is.
    data = np.ma.masked_array(data[0], mask=data[1] == 0) if data.shape[0] == 2 else data[0]
    return np.ma.filled(data, fill_value=np.float32(np.nan))


# Building a WarpedVRT sets up its transformer (PROJ) with the GIL held; a thread inside GDAL
# that reports an error or debug message through rasterio's handler then waits for the GIL while
# holding GDAL's lock, and the builder waits for that lock: both hang. One builder at a time,
# and none at all for grids read plainly, keeps the reads of a chunk clear of it.
_VRT_LOCK = threading.Lock()


def _aligned_factor(ds: rasterio.DatasetReader, grid: Grid, resampling: Resampling) -> int:
    """k when ``ds`` is ``grid``'s CRS with k x k target pixels per source pixel, edges on the
    grid's, and nearest (or k = 1) resampling: a plain read then gives what a WarpedVRT gives.
    0 otherwise."""
    t, res = ds.transform, grid.resolution
    factor = round(t.a / res)
    aligned = (
        ds.crs is not None
        and ds.crs.to_epsg() == grid.epsg
        and factor >= 1
        and t.b == 0
        and t.d == 0
        and t.a == factor * res
        and t.e == -factor * res
        and ((t.c - grid.bounds[0]) / res).is_integer()
        and ((grid.bounds[3] - t.f) / res).is_integer()
    )
    return factor if aligned and (factor == 1 or resampling == Resampling.nearest) else 0


def _plain_read(ds: rasterio.DatasetReader, grid: Grid, window: Window, k: int) -> np.ndarray:
    """``window`` of ``grid`` read straight from ``ds`` (``k`` x ``k`` target pixels per source
    pixel, upsampled by nearest on read); NaN outside the file and where it holds nodata."""
    out = np.full((window.height, window.width), np.nan, np.float32)
    # The window's edges in target pixels counted from the file's top-left corner.
    col = window.col_off + round((grid.bounds[0] - ds.transform.c) / grid.resolution)
    row = window.row_off + round((ds.transform.f - grid.bounds[3]) / grid.resolution)
    c0, c1 = max(col, 0), min(col + window.width, ds.width * k)
    r0, r1 = max(row, 0), min(row + window.height, ds.height * k)
    if c0 >= c1 or r0 >= r1:
        return out
    # Whole source pixels covering it, read at k x k and trimmed to the target pixels.
    s_c0, s_r0 = c0 // k, r0 // k
    s_c1, s_r1 = -(-c1 // k), -(-r1 // k)
    data = ds.read(
        1,
        window=Window(s_c0, s_r0, s_c1 - s_c0, s_r1 - s_r0),
        out_shape=((s_r1 - s_r0) * k, (s_c1 - s_c0) * k),
        resampling=Resampling.nearest,
        out_dtype=np.float32,
        masked=True,
    )
    piece = np.ma.filled(data, fill_value=np.float32(np.nan))
    out[r0 - row : r1 - row, c0 - col : c1 - col] = piece[
        r0 - s_r0 * k : r1 - s_r0 * k, c0 - s_c0 * k : c1 - s_c0 * k
    ]
    return out


def reader_threads(concurrency: int) -> ThreadPoolExecutor:
    """This process's ``concurrency`` reader threads, started once and kept for every call.

    GDAL keeps its HTTP connections per thread, so fresh threads for every block of months would
    connect again for every read; kept threads reuse them. Calls that run at once (the tasks of
    a Dask worker's threads) share the threads, so the bound on reads in flight is per process.
    """
    key = (os.getpid(), max(1, concurrency))  # a forked child starts its own threads
    with _THREADS_LOCK:
        if key not in _THREADS:
            _THREADS[key] = ThreadPoolExecutor(key[1], thread_name_prefix="timesenclip-read")
        return _THREADS[key]


_THREADS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_THREADS_LOCK = threading.Lock()


def _signed(href: str) -> str:
    """A Planetary Computer href with a SAS token (cached per storage container and process)."""
    import planetary_computer

    return planetary_computer.sign(href)


@dataclass
class SceneRead:
    """The outcome of reading scenes: ``(scenes, h, w)`` per asset, and what was left out."""

    layers: dict[str, np.ndarray]
    used: list[ItemRef]
    skipped: list[dict] = field(default_factory=list)


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
) -> SceneRead:
    """Every asset of every scene in ``refs`` on ``grid``, read ``concurrency`` at a time.

    Under ``on_bad_asset="raise"`` a failed read raises ``BadAssetError`` naming the item,
    asset, href and error; under ``"skip"`` the scene is left out and recorded in ``skipped``.
    Transient failures are retried first (``pipeline.cube.read_retry``).
    """
    shape = grid.shape if window is None else (window.height, window.width)
    layers = {name: np.empty((len(refs), *shape), np.float32) for name in ASSETS}
    failures: dict[int, dict] = {}

    def read(job: tuple[int, int]) -> None:
        i, b = job
        ref, band = refs[i], ASSETS[b]
        href = _signed(ref.hrefs[b]) if sign_hrefs else ref.hrefs[b]
        expect = ref.grids[b] if ref.grids else None
        try:
            layers[band][i] = read_with_retries(
                lambda: read_band(href, grid, window, resampling_of(band), expect=expect),
                ref.hrefs[b],
                ref.label(band),
                retry,
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

    jobs = [(i, b) for i in range(len(refs)) for b in range(len(ASSETS))]
    list(reader_threads(concurrency).map(read, jobs))
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
    return SceneRead(layers, [refs[i] for i in keep], list(failures.values()))
