"""Per-chunk cost of a chunk's composites: our reader against odc-stac, with and without latency.

Writes ``--base`` synthetic scenes (10 bands + SCL, 20 m bands and SCL at native 20 m), rewritten
as COGs tiled like Earth Search's Sentinel-2 COGs (1024-px DEFLATE tiles, four overview levels,
header first), and serves them over loopback HTTP (``fixtures.file_server``). A run of N scenes
repeats the base scenes under new names (hard links, dates shifted by hours, same month), so
GDAL caches nothing across them. One chunk of ``--chunk`` px is composited per measure:

- ``ours``: ``pipeline.cube.composite.composite_chunk`` (``pipeline.cube.reader``: rasterio,
  reads in flight across blocks of months, aligned grids read plainly);
- ``ours serial``: the same with each block read, then reduced, on one thread (no read-ahead),
  so its time is exactly its reads + its medians + everything else: the chunk's overhead
  besides reading pixels and taking medians is that rest;
- ``ours read``: only the reads (``read_scenes`` of every scene in one call);
- ``odc-stac``: ``odc.stac.load`` of the chunk's geobox (no Dask, ``pool`` threads, cloud
  defaults), then the same masking and median as ours.

Every measure runs in its own child process and reports its own peak memory (VmHWM); configs
are interleaved and repeated, and medians are printed. Ours must equal a reference composite
(each file read whole with rasterio, 20 m upsampled by ``np.repeat``, ``numpy.nanmedian``).

    python bench/cube.py --latency 20                 # 24 and 300 scenes, 3 repeats
    python bench/cube.py --latency 20 --scenes 24 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path, and
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/encoder.py would shadow encoder

from bench.machine import machine

MEASURE = "--measure"
METHODS = ("ours", "ours serial", "ours read", "odc-stac", "reference")
TILE = 1024


def write_scenes(root: Path, size: int, base: int) -> list[dict]:
    """``base`` scenes of ``size`` px as Sentinel-2-like COGs; their Earth Search item dicts."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    from fixtures.synthetic import write_synthetic_collection

    dates = [datetime.date(2023, 1 + i * 12 // base, 5 + 15 * (i % 2)) for i in range(base)]
    written = write_synthetic_collection(
        root / "draft", shape=(size, size), dates=dates, boa_offset_applied=None
    )
    for item in written.items:
        for asset in item["assets"].values():
            draft = Path(asset["href"])
            target = root / "scenes" / item["id"] / draft.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(draft) as src:  # 16-px tiles: rewrite as real S2 COGs are
                rio_copy(
                    src,
                    target,
                    driver="COG",
                    blocksize=TILE,
                    compress="DEFLATE",
                    predictor=2,
                    overview_count=4,
                    overview_resampling="nearest",
                )
            draft.unlink()
            asset["href"] = str(target)
    return written.items


def scene_set(items: list[dict], root: Path, count: int) -> list[dict]:
    """``count`` items cycling over ``items``; repeats get their own ids, files and hours."""
    out = []
    for n in range(count):
        item = json.loads(json.dumps(items[n % len(items)]))
        copy_index = n // len(items)
        if copy_index:
            when = datetime.datetime.fromisoformat(item["properties"]["datetime"])
            when += datetime.timedelta(hours=copy_index)
            item["properties"]["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            item["id"] = f"{item['id']}_r{copy_index}"
            folder = root / "repeats" / item["id"]
            folder.mkdir(parents=True, exist_ok=True)
            for asset in item["assets"].values():
                target = folder / Path(asset["href"]).name
                if not target.exists():
                    os.link(asset["href"], target)
                asset["href"] = str(target)
        out.append(item)
    return out


def chunk_grid(size: int, chunk: int):
    """The chunk: ``chunk`` px square at (chunk, chunk) of the scene grid, inside one tile."""
    from pipeline.geo.grid import Grid

    xmin, ymax = 500000.0, 4800000.0
    return Grid(32631, (xmin, ymax - 10.0 * size, xmin + 10.0 * size, ymax), 10.0).window(
        chunk, chunk, chunk, chunk
    )


def _refs(items: list[dict]):
    from pipeline.search.items import item_ref

    return [item_ref(item) for item in items]


class _InlineExecutor:
    """A stand-in for ``ThreadPoolExecutor`` that runs each call at once, on the caller's thread."""

    def __init__(self, workers: int) -> None:
        pass

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def _timed(module, name: str, spent: list[float]) -> None:
    """Make ``module.name`` add its wall time per call to ``spent``."""
    fn = getattr(module, name)

    def timed(*args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(module, name, timed)


def ours(items: list[dict], grid, concurrency: int, serial: bool = False) -> dict:
    """``composite_chunk`` as a worker runs it; with ``serial`` each block is read, then reduced,
    on one thread, so the chunk's time is exactly reads + medians + everything else."""
    import pipeline.cube.composite as cube

    reads: list[float] = []
    medians: list[float] = []
    _timed(cube, "_read", reads)
    _timed(cube, "_reduce", medians)
    if serial:
        cube.ThreadPoolExecutor = _InlineExecutor
    result = cube.composite_chunk(
        _refs(items), grid, cube.CubeOptions(read_concurrency=concurrency)
    )
    return {
        "arrays": (result.composite, result.valid_months),
        "read_s": sum(reads),
        "reduce_s": sum(medians),
    }


def ours_serial(items: list[dict], grid, concurrency: int) -> dict:
    return ours(items, grid, concurrency, serial=True)


def ours_read(items: list[dict], grid, concurrency: int) -> dict:
    from pipeline.cube.composite import CubeOptions
    from pipeline.cube.reader import read_scenes

    options = CubeOptions(read_concurrency=concurrency)
    read_scenes(_refs(items), grid, resampling_of=options.resampling_of, concurrency=concurrency)
    return {}


def odc_stac(items: list[dict], grid, concurrency: int) -> dict:
    """odc-stac's load of the chunk, then our masking and median on what it read."""
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox

    import pipeline.cube.composite as cube
    from pipeline.cube.reader import SceneRead
    from pipeline.search.items import ASSETS
    from pipeline.search.stac import EARTH_SEARCH_ASSETS

    odc.stac.configure_rio(cloud_defaults=True)
    refs = cube._in_order(_refs(items))
    geobox = GeoBox.from_bbox(grid.bounds, grid.crs, resolution=grid.resolution)
    keys = [EARTH_SEARCH_ASSETS[band] for band in ASSETS]
    by_id = {item["id"]: item for item in items}
    data = odc.stac.load(
        [pystac.Item.from_dict(by_id[r.id]) for r in refs],  # in time order, as ours
        bands=keys,
        geobox=geobox,
        groupby="id",
        resampling="nearest",
        dtype="float32",
        nodata=float("nan"),
        pool=concurrency,
    )
    layers = {band: data[key].values for band, key in zip(ASSETS, keys, strict=True)}
    options = cube.CubeOptions()
    composite = np.full((12, 10, *grid.shape), np.nan, np.float32)
    valid = np.zeros(grid.shape, np.uint8)
    for i, block, group in cube._groups(refs, options):
        index = [refs.index(r) for r in group]
        read = SceneRead({band: values[index] for band, values in layers.items()}, group)
        tokens, has_data = cube._reduce(read, options, block)
        composite[i : i + 1] = tokens
        valid += has_data.sum(axis=0, dtype=np.uint8)
    return {"arrays": (composite, valid)}


def reference(items: list[dict], grid, concurrency: int) -> dict:
    """Each local file read whole, 20 m upsampled by repetition, ``numpy.nanmedian`` per month."""
    import rasterio
    from rasterio.windows import Window

    from encoder.preprocess import BANDS
    from pipeline.search.harmonize import harmonization
    from pipeline.search.sentinel2 import DEFAULT_CLOUD_MASK
    from pipeline.search.stac import EARTH_SEARCH_ASSETS

    row = round((4800000.0 - grid.bounds[3]) / 10)
    col = round((grid.bounds[0] - 500000.0) / 10)
    height, width = grid.shape

    def read(href: str) -> np.ndarray:
        with rasterio.open(href) as src:
            k = round(src.res[0] / 10)
            window = Window(col // k, row // k, -(-width // k) + 1, -(-height // k) + 1)
            data = src.read(1, window=window, boundless=False)
        data = np.repeat(np.repeat(data, k, 0), k, 1)
        return data[row % k : row % k + height, col % k : col % k + width]

    months = np.array([int(item["properties"]["datetime"][5:7]) for item in items])
    composite = np.full((12, len(BANDS), height, width), np.nan, np.float32)
    valid = np.zeros((height, width), np.uint8)
    for month in range(1, 13):
        month_items = [item for item, m in zip(items, months, strict=True) if m == month]
        if not month_items:
            continue
        href = {key: [it["assets"][key]["href"] for it in month_items] for key in ("scl",)}
        scl = np.stack([read(h) for h in href["scl"]])
        values = np.stack(
            [
                np.stack([read(it["assets"][EARTH_SEARCH_ASSETS[b]]["href"]) for b in BANDS])
                for it in month_items
            ]
        ).astype(np.float32)
        offsets = np.array([harmonization(it).offset for it in month_items], np.float32)
        dropped = np.isin(scl, DEFAULT_CLOUD_MASK) | (scl == 0) | (values == 0).any(axis=1)
        values -= offsets[:, None, None, None]
        values[np.broadcast_to(dropped[:, None], values.shape)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            composite[month - 1] = np.nanmedian(values, axis=0)
        valid += (~dropped).any(axis=0)
    return {"arrays": (composite, valid)}


MEASURES = {
    "ours": ours,
    "ours serial": ours_serial,
    "ours read": ours_read,
    "odc-stac": odc_stac,
    "reference": reference,
}


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def measure(
    method: str, items_path: Path, url: str, size: int, chunk: int, concurrency: int
) -> None:
    """Child process: time one chunk read from ``url``; print a JSON line with its own peak."""
    import dask
    import dask.highlevelgraph

    import pipeline.cube.composite  # noqa: F401  (imports are not part of the measure)
    from pipeline.cube.reader import GDAL_OPTIONS, configure_gdal

    configure_gdal(GDAL_OPTIONS)  # as a worker does from its chunk settings
    graphs = []
    init = dask.highlevelgraph.HighLevelGraph.__init__

    def counted(self, *args, **kwargs):
        graphs.append(1)
        init(self, *args, **kwargs)

    dask.highlevelgraph.HighLevelGraph.__init__ = counted  # a task must build no Dask graph
    items = json.loads(items_path.read_text())
    root = items_path.parent
    if method != "reference":
        for item in items:
            for asset in item["assets"].values():
                asset["href"] = f"{url}/{Path(asset['href']).relative_to(root).as_posix()}"
    grid = chunk_grid(size, chunk)
    start = time.perf_counter()
    out = MEASURES[method](items, grid, concurrency)
    seconds = time.perf_counter() - start
    arrays = out.pop("arrays", ())
    digest = hashlib.sha256(b"".join(np.nan_to_num(a, nan=-1.0).tobytes() for a in arrays))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_kib": _peak_kib(),
                "digest": digest.hexdigest()[:12] if arrays else "",
                "assets": 11 * len(items),
                "dask_graphs": len(graphs),
                **out,
            }
        )
    )


def run_child(args: list[str], timeout: float) -> dict:
    command = [sys.executable, __file__, MEASURE, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {args[:1]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def versions() -> str:
    import odc.stac
    import rasterio

    return (
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}, "
        f"odc-stac {odc.stac.__version__}"
    )


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == MEASURE:
        parser = argparse.ArgumentParser(prog=f"cube.py {MEASURE}")
        parser.add_argument("method", choices=METHODS)
        parser.add_argument("items", type=Path)
        parser.add_argument("url")
        for name in ("size", "chunk", "concurrency"):
            parser.add_argument(f"--{name}", type=int, required=True)
        a = parser.parse_args(sys.argv[2:])
        measure(a.method, a.items, a.url, a.size, a.chunk, a.concurrency)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="scene width and height in px")
    parser.add_argument("--chunk", type=int, default=512, help="chunk width and height in px")
    parser.add_argument("--base", type=int, default=12, help="distinct scenes written")
    parser.add_argument("--scenes", type=int, nargs="+", default=[24, 300])
    parser.add_argument("--latency", type=float, default=20.0, help="ms per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="cube.read_concurrency")
    parser.add_argument("--timeout", type=float, default=600, help="s per child")
    args = parser.parse_args()

    from fixtures.file_server import serve_files

    begin = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_cube_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        base = write_scenes(root, args.size, args.base)
        print(f"wrote {args.base} scenes in {time.perf_counter() - start:.0f} s", flush=True)
        # The servers run here, so their work is not in a child's time or memory.
        with serve_files(root) as plain, serve_files(root, latency_ms=args.latency) as slow:
            servers = {0.0: plain, args.latency: slow}
            for count in args.scenes:
                items_path = root / f"items_{count}.json"
                items_path.write_text(json.dumps(scene_set(base, root, count)))
                common = ["--size", str(args.size), "--chunk", str(args.chunk)]
                common += ["--concurrency", str(args.concurrency)]

                def child(method: str, latency: float, items_path=items_path, common=common):
                    server = servers[latency]
                    before = sum(server.counts.values())
                    out = run_child([method, str(items_path), server.url, *common], args.timeout)
                    requests = sum(server.counts.values()) - before
                    return {**out, "requests_per_asset": requests / out["assets"]}

                ref = child("reference", 0.0)["digest"]
                configs = [(m, lat) for m in ("ours", "odc-stac") for lat in (0.0, args.latency)]
                configs += [("ours serial", 0.0), ("ours read", 0.0)]
                results: dict = {c: [] for c in configs}
                for repeat in range(args.repeats):  # interleaved: each repeat runs every config
                    for method, lat in configs:
                        out = child(method, lat)
                        results[(method, lat)].append(out)
                        print(f"{count} {method} {lat:g} ms #{repeat}: {out}", flush=True)
                rows.append((count, ref, results))

    print(f"\nmachine: {machine()}\nversions: {versions()}")
    print(
        f"scenes {args.size} px, COG tiles {TILE} px DEFLATE + 4 overviews, chunk {args.chunk} px,"
        f" read_concurrency {args.concurrency}, {args.repeats} repeats (median, min-max)\n"
    )
    print(
        "| scenes | method | latency ms | s per chunk | spread | vs no latency | peak MiB "
        "| requests/asset | = reference |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for count, ref, results in rows:
        for (method, lat), outs in results.items():
            seconds = [o["seconds"] for o in outs]
            base_s = statistics.median(o["seconds"] for o in results[(method, 0.0)])
            same = {o["digest"] for o in outs}
            check = "" if not outs[0]["digest"] else ("yes" if same == {ref} else "NO")
            print(
                f"| {count} | {method} | {lat:g} | {statistics.median(seconds):.2f} | "
                f"{_spread(seconds)} | {statistics.median(seconds) / base_s:.2f}x | "
                f"{statistics.median(o['peak_kib'] for o in outs) / 1024:.0f} | "
                f"{statistics.median(o['requests_per_asset'] for o in outs):.2f} | {check} |"
            )
    print(
        "\n| scenes | ours s | serial s | its reads s | its medians s | overhead s | of reads "
        "| reads alone s | dask graphs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for count, _, results in rows:
        serial = results[("ours serial", 0.0)]
        # Per repeat, so the three parts come from the same chunk: nothing here overlaps.
        overheads = [o["seconds"] - o["read_s"] - o["reduce_s"] for o in serial]
        read_s = statistics.median(o["read_s"] for o in serial)
        overhead = statistics.median(overheads)
        graphs = max(
            o["dask_graphs"] for outs in results.values() for o in outs if "dask_graphs" in o
        )
        cells = [
            statistics.median(o["seconds"] for o in results[("ours", 0.0)]),
            statistics.median(o["seconds"] for o in serial),
            read_s,
            statistics.median(o["reduce_s"] for o in serial),
            overhead,
        ]
        alone = statistics.median(o["seconds"] for o in results[("ours read", 0.0)])
        print(
            f"| {count} | {' | '.join(f'{c:.2f}' for c in cells)} | "
            f"{100 * overhead / read_s:.1f} % | {alone:.2f} | {graphs} |"
        )
    print(f"\ntotal {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
