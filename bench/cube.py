"""Composites against their decode floor: whole ``timesenclip run`` s and one chunk alone, with
and without latency.

``--base`` synthetic scenes of ``--size`` px (``fixtures.synthetic``, 30 % clouds, 20 m bands and
SCL at 20 m) are rewritten as COGs in Earth Search's layout (1024-px DEFLATE tiles, predictor 2,
four overviews, header first) and served over loopback HTTP (``fixtures.file_server``, in this
process) with and without ``--latency`` ms a request. A set of N scenes repeats them under new
names (hard links; dates shifted by hours within the month), so no cache is shared between
scenes. For each N of ``--scenes``, in one run and each in a process of its own:

- floor: every asset of every scene decoded once, whole, at its own resolution (uint16 and
  uint8, one thread, local files): CPU seconds.
- run: ``timesenclip run`` over the scenes' area (items from a file, a tiny random encoder, one
  class task, default settings otherwise): CPU seconds of its whole process tree
  (``RUSAGE_CHILDREN`` once reaped) less its own embed and classify seconds (its summary), the
  ratio of that to the floor, wall seconds, cores busy (CPU / (wall x cores)), and the same with
  the CPU this process spent meanwhile (the file server, which shares the run's cores as an
  object store would not), the largest peak memory (VmHWM, sampled) of a process other than the
  client, requests per asset. At 0 ms, and at ``--latency`` ms a request.
- the same run with the scenes read from their files (no server, as a remote object store
  shares none of the run's cores), after those over HTTP.
- split: the run's compositing alone (``pipeline.cube.area.composite_area`` over the scenes'
  grid, every block of months, medians on one thread): CPU seconds of decoding (the reader
  threads), masking, medians (``pipeline.cube.median``) and the rest (the windows' writes too).
- chunk: one 512-px chunk composited alone, as ``build_cube`` and a chunk task that cannot
  reach its tile's blocks do (``composite_chunk``), and by odc-stac (``odc.stac.load`` of the
  chunk's geobox, then our medians), against the chunk's share of the floor; both must equal a
  reference (numpy ``nanmedian`` of every band on the 10 m grid), as must the split's stored
  tokens of that chunk.

With ``--baseline DIR`` (another checkout, say a worktree of main), that checkout's run of the
same workflow follows ours at 0 ms for the scene counts of ``--baseline-scenes``: before and
after, in one run.

    python bench/cube.py [--scenes 24 72 300] [--latency 20] [--size 2048] [--data DIR]
                         [--baseline DIR [--baseline-scenes 24]]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path, and
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/encoder.py would shadow encoder

from bench.machine import machine

REPO = Path(__file__).resolve().parents[1]
MEASURE = "--measure"
TILE = 1024
CHUNK = 512
EPSG = 32631
# The top-left corner of one of the plan's default tiles (4096 px at 10 m) in UTM 31N: scenes
# placed here make a 2048-px area of one tile; ``--shift`` moves them off it.
TILE_CORNER = (12 * 40960.0, 118 * 40960.0)
CLOUD_FRACTION = 0.3
SPLIT = ("decode", "masking", "median", "rest")


def write_scenes(root: Path, size: int, base: int, shift: int) -> list[dict]:
    """``base`` scenes of ``size`` px as Sentinel-2-like COGs, their top-left corner ``shift`` px
    right and down of a plan tile's; their Earth Search item dicts."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    from fixtures.synthetic import write_synthetic_collection

    dates = [datetime.date(2023, 1 + i * 12 // base, 5 + 15 * (i % 2)) for i in range(base)]
    written = write_synthetic_collection(
        root / "draft",
        origin=(TILE_CORNER[0] + 10.0 * shift, TILE_CORNER[1] - 10.0 * shift),
        epsg=EPSG,
        shape=(size, size),
        dates=dates,
        cloud_fraction=CLOUD_FRACTION,
        boa_offset_applied=None,
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
    shutil.rmtree(root / "draft")
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


def scene_grid(items: list[dict], size: int):
    """The 10 m grid of the scenes ``items`` of ``size`` px."""
    from pipeline.geo.grid import Grid
    from pipeline.search.stac import EARTH_SEARCH_ASSETS

    transform = items[0]["assets"][EARTH_SEARCH_ASSETS["B02"]]["proj:transform"]
    xmin, ymax = transform[2], transform[5]
    return Grid(EPSG, (xmin, ymax - 10.0 * size, xmin + 10.0 * size, ymax), 10.0)


def chunk_window(size: int):
    """A 512-px chunk placed as the run's chunks are on these scenes (2048 px: across 10 m
    blocks), inside scenes of ``size`` >= 512 px."""
    from rasterio.windows import Window

    def place(offset: int) -> int:
        return max(0, min(size // 2 - offset, size - CHUNK))

    return Window(place(176), place(256), CHUNK, CHUNK)


def chunk_grid(items: list[dict], size: int):
    """The grid of ``chunk_window`` of the scenes ``items``."""
    window = chunk_window(size)
    return scene_grid(items, size).window(
        window.row_off, window.col_off, window.height, window.width
    )


def _refs(items: list[dict]):
    from pipeline.search.items import item_ref

    return [item_ref(item) for item in items]


def _digest(composite: np.ndarray, valid: np.ndarray) -> str:
    data = np.nan_to_num(composite, nan=-1.0).tobytes() + valid.astype(np.uint8).tobytes()
    return hashlib.sha256(data).hexdigest()[:12]


# --- the measures, each in a child process ------------------------------------------------------


def floor(items: list[dict], size: int) -> dict:
    """Every asset of every scene decoded once, whole, at its own resolution, one thread."""
    import rasterio

    start = time.process_time()
    for item in items:
        for asset in item["local"].values():
            with rasterio.open(asset) as src:
                src.read(1)
    return {"cpu": time.process_time() - start}


def split(items: list[dict], size: int) -> dict:
    """The run's compositing alone, its CPU time split by what it does."""
    from rasterio.windows import Window

    import pipeline.cube.area as area_module
    import pipeline.cube.composite as composite
    import pipeline.cube.observations as observations
    from pipeline.cube.area import composite_area, stored_chunk
    from pipeline.cube.composite import CubeOptions, month_blocks

    spent = {"median": 0.0, "masking": 0.0, "write": 0.0}

    def timed(module, name: str, key: str) -> None:
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += time.thread_time() - start

        setattr(module, name, wrapper)

    timed(observations, "median_over_time", "median")
    timed(composite, "masked_tokens", "masking")  # medians included: taken off below
    timed(area_module, "_save", "write")  # the windows' writes, on a thread of their own
    grid, options, refs = scene_grid(items, size), CubeOptions(), _refs(items)
    area = Window(0, 0, size, size)
    with tempfile.TemporaryDirectory(prefix="bench_split_") as folder:
        start, main = time.process_time(), time.thread_time()
        stored = [
            composite_area(refs, grid, area, i, options, Path(folder), threads=1)
            for i in range(len(month_blocks(options)))
        ]
        total, main = time.process_time() - start, time.thread_time() - main
        cube = stored_chunk(stored, refs, grid, chunk_window(size), options)
    masking = spent["masking"] - spent["median"]
    return {
        "cpu": total,
        "decode": total - main - spent["write"],
        "masking": masking,
        "median": spent["median"],
        "rest": main - masking - spent["median"] + spent["write"],
        "digest": _digest(cube.composite, cube.valid_months),
    }


def chunk_ours(items: list[dict], size: int) -> dict:
    """One chunk composited alone: ``composite_chunk``."""
    from pipeline.cube.composite import CubeOptions, composite_chunk

    part = chunk_grid(items, size)
    start = time.process_time()
    cube = composite_chunk(_refs(items), part, CubeOptions())
    return {
        "cpu": time.process_time() - start,
        "digest": _digest(cube.composite, cube.valid_months),
    }


def chunk_odc(items: list[dict], size: int) -> dict:
    """odc-stac's load of the chunk (uint16, 0 = no data), then our masks and medians."""
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox
    from rasterio.windows import Window

    from pipeline.cube.composite import CubeOptions, in_time_order, month_blocks, reduce_window
    from pipeline.cube.reader import SceneRead
    from pipeline.search.items import ASSETS, SCL
    from pipeline.search.stac import EARTH_SEARCH_ASSETS

    part = chunk_grid(items, size)
    start = time.process_time()
    odc.stac.configure_rio(cloud_defaults=True)
    refs = in_time_order(_refs(items))
    by_id = {item["id"]: item for item in items}
    keys = [EARTH_SEARCH_ASSETS[band] for band in ASSETS]
    data = odc.stac.load(
        [pystac.Item.from_dict(by_id[r.id]) for r in refs],  # in time order, as ours
        bands=keys,
        geobox=GeoBox.from_bbox(part.bounds, part.crs, resolution=part.resolution),
        groupby="id",
        resampling="nearest",
        dtype="uint16",
        nodata=0,
        pool=16,
    )
    layers = {band: data[key].values for band, key in zip(ASSETS, keys, strict=True)}
    layers[SCL] = layers[SCL].astype(np.uint8)
    options = CubeOptions()
    composite = np.full((12, 10, CHUNK, CHUNK), np.nan, np.float32)
    valid = np.zeros((CHUNK, CHUNK), np.uint8)
    whole = Window(0, 0, CHUNK, CHUNK)
    for i, block in enumerate(month_blocks(options)):
        index = [k for k, r in enumerate(refs) if r.month in block]
        if not index:
            continue
        read = SceneRead(
            {b: v[index] for b, v in layers.items()}, [refs[k] for k in index], [], whole
        )
        tokens, has_data = reduce_window(read, options, block)
        composite[i] = tokens.full(slice(0, CHUNK), slice(0, CHUNK))[0]
        valid += has_data.sum(axis=0, dtype=np.uint8)
    return {"cpu": time.process_time() - start, "digest": _digest(composite, valid)}


def chunk_reference(items: list[dict], size: int) -> dict:
    """Each local file read, 20 m bands repeated onto the 10 m grid, ``numpy.nanmedian``."""
    import rasterio
    from rasterio.windows import Window

    from encoder.preprocess import BANDS
    from pipeline.search.harmonize import harmonization
    from pipeline.search.sentinel2 import DEFAULT_CLOUD_MASK
    from pipeline.search.stac import EARTH_SEARCH_ASSETS

    window = chunk_window(size)
    row, col = window.row_off, window.col_off

    def read(href: str) -> np.ndarray:
        with rasterio.open(href) as src:
            k = round(src.res[0] / 10)
            data = src.read(1, window=Window(col // k, row // k, CHUNK // k + 1, CHUNK // k + 1))
        data = np.repeat(np.repeat(data, k, 0), k, 1)
        return data[row % k : row % k + CHUNK, col % k : col % k + CHUNK]

    months = np.array([int(item["properties"]["datetime"][5:7]) for item in items])
    composite = np.full((12, len(BANDS), CHUNK, CHUNK), np.nan, np.float32)
    valid = np.zeros((CHUNK, CHUNK), np.uint8)
    for month in range(1, 13):
        chosen = [item for item, m in zip(items, months, strict=True) if m == month]
        if not chosen:
            continue
        scl = np.stack([read(it["local"]["scl"]) for it in chosen])
        values = np.stack(
            [np.stack([read(it["local"][EARTH_SEARCH_ASSETS[b]]) for b in BANDS]) for it in chosen]
        ).astype(np.float32)
        offsets = np.array([harmonization(it).offset for it in chosen], np.float32)
        dropped = np.isin(scl, DEFAULT_CLOUD_MASK) | (scl == 0) | (values == 0).any(axis=1)
        values -= offsets[:, None, None, None]
        values[np.broadcast_to(dropped[:, None], values.shape)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            composite[month - 1] = np.nanmedian(values, axis=0)
        valid += (~dropped).any(axis=0)
    return {"digest": _digest(composite, valid)}


MEASURES = {
    "floor": floor,
    "split": split,
    "chunk ours": chunk_ours,
    "chunk odc-stac": chunk_odc,
    "chunk reference": chunk_reference,
}


def _peak_kib(pid: int | str = "self") -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def measure(method: str, items_path: Path, size: int) -> None:
    """Child process: one measure; prints a JSON line with its own peak memory."""
    import pipeline.cube.area  # noqa: F401  (imports are not part of the measure)
    from pipeline.cube.reader import GDAL_OPTIONS, configure_gdal

    configure_gdal(GDAL_OPTIONS)  # as a worker does from its chunk settings
    out = MEASURES[method](json.loads(items_path.read_text()), size)
    print(json.dumps({**out, "peak_kib": _peak_kib()}))


def run_child(args: list[str], timeout: float) -> dict:
    command = [sys.executable, __file__, MEASURE, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {args[:1]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- whole runs -------------------------------------------------------------------------------


def write_models(root: Path) -> dict:
    """A tiny random encoder checkpoint and CLIP: the model's own arithmetic costs little (one
    layer of width 8: about 2 us a pixel on a CPU core, against 19 us at width 32, depth 2)."""
    from encoder.checkpoint import EncoderMetadata, save_checkpoint
    from fixtures.tiny import tiny_encoder, write_tiny_clip

    clip = write_tiny_clip(root / "clip", embed_dim=8)
    checkpoint = root / "encoder.pt"
    metadata = EncoderMetadata(clip_model=f"local-dir:{clip}")
    save_checkpoint(tiny_encoder(8, depth=1, heads=1, ff_dim=8), checkpoint, metadata=metadata)
    return {"checkpoint": str(checkpoint), "clip": {"model": f"local-dir:{clip}"}, "device": "cpu"}


def workflow(items_path: Path, items: list[dict], model: dict, size: int, out: Path) -> dict:
    """The workflow a user would write for the scenes' area (a GeoJSON polygon of their square,
    1 m inside it so the grid snaps to the scenes' own pixels), default settings otherwise."""
    from rasterio.warp import transform

    xmin, ymin, xmax, ymax = scene_grid(items, size).bounds
    up = np.linspace(0.0, 1.0, 33)[:-1]  # each side from one corner to before the next
    down = 1.0 - up
    x = np.concatenate([up, np.ones(32), down, np.zeros(32), [0.0]])
    y = np.concatenate([np.zeros(32), up, np.ones(32), down, [0.0]])
    lon, lat = transform(
        f"EPSG:{EPSG}",
        "EPSG:4326",
        xmin + 1 + (xmax - xmin - 2) * x,
        ymin + 1 + (ymax - ymin - 2) * y,
    )
    geometry = {"type": "Polygon", "coordinates": [np.column_stack([lon, lat]).tolist()]}
    region = out.with_suffix(".geojson")
    region.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": geometry}))
    return {
        "name": "bench",
        "year": 2023,
        "regions": [{"name": "area", "geojson": str(region)}],
        "stac": {"file": str(items_path), "collection": "sentinel-2-l2a"},
        "model": model,
        "tasks": [{"name": "land_cover", "classes": "land_cover"}],
        "outputs": {"dir": str(out)},
    }


def write_workflow(
    work: Path, name: str, items: list[dict], model: dict, size: int, **stac
) -> Path:
    """The workflow over ``items`` (written beside it as NDJSON, ``stac`` keys added to its
    STAC section) and its outputs, named ``name`` in ``work``: its path."""
    ndjson = work / f"items-{name}.ndjson"
    ndjson.write_text("".join(json.dumps(i) + "\n" for i in items))
    flow = workflow(ndjson, items, model, size, work / f"out-{name}")
    flow["stac"].update(stac)
    path = work / f"workflow-{name}.yaml"
    path.write_text(json.dumps(flow))
    return path


def _tree_peaks(root: int, peaks: dict[int, int], done: threading.Event) -> None:
    """Sample the VmHWM of every process under ``root`` until ``done``."""
    import psutil

    while not done.wait(0.2):
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in psutil.Process(root).children(recursive=True):
                peaks[proc.pid] = max(peaks.get(proc.pid, 0), _peak_kib(proc.pid))


def whole_run(path: Path, timeout: float, repo: Path = REPO) -> dict:
    """``timesenclip run`` of the workflow at ``path`` with the code of the checkout ``repo``:
    its tree's CPU, wall and peak memory."""
    import yaml

    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    here = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(path)],
        cwd=repo,  # python -m puts the working directory first on sys.path
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peaks: dict[int, int] = {}
    done = threading.Event()
    sampler = threading.Thread(target=_tree_peaks, args=(process.pid, peaks, done), daemon=True)
    sampler.start()
    out, _ = process.communicate(timeout=timeout)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = resource.getrusage(resource.RUSAGE_SELF)
    if process.returncode:
        raise SystemExit(f"the run of {path} failed (exit {process.returncode}):\n{out[-3000:]}")
    stages = {}
    for line in out.splitlines():  # "time per stage (summed over workers): cube 1.0 s, ..."
        if line.startswith("time per stage"):
            for part in line.partition(":")[2].split(","):
                name, seconds, _ = part.split()
                stages[name] = float(seconds)
    outputs = Path(yaml.safe_load(path.read_text())["outputs"]["dir"])
    shutil.rmtree(outputs, ignore_errors=True)
    return {
        "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        # This process meanwhile: the file server (in a real run, the object store's), the
        # sampler of peaks; on the same cores as the run.
        "server_cpu": mine.ru_utime + mine.ru_stime - here.ru_utime - here.ru_stime,
        "wall": wall,
        "stages": stages,
        "worker_peak_kib": max(peaks.values(), default=0),
    }


def versions() -> str:
    import odc.stac
    import rasterio

    return (
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}, "
        f"odc-stac {odc.stac.__version__}"
    )


def load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == MEASURE:
        parser = argparse.ArgumentParser(prog=f"cube.py {MEASURE}")
        parser.add_argument("method", choices=list(MEASURES))
        parser.add_argument("items", type=Path)
        parser.add_argument("--size", type=int, required=True)
        a = parser.parse_args(sys.argv[2:])
        measure(a.method, a.items, a.size)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene width and height in px")
    parser.add_argument("--base", type=int, default=12, help="distinct scenes written")
    parser.add_argument(
        "--shift",
        type=int,
        default=0,
        help="px the scenes' corner lies right and down of a plan tile's (0: one tile)",
    )
    parser.add_argument("--scenes", type=int, nargs="+", default=[24, 72, 300])
    parser.add_argument("--latency", type=float, default=20.0, help="ms per request")
    parser.add_argument("--data", type=Path, help="keep the scenes here (reused when present)")
    parser.add_argument("--timeout", type=float, default=1800, help="s per measure")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (say, a worktree of main): its run of the same workflow follows "
        "ours at 0 ms, for the scene counts of --baseline-scenes",
    )
    parser.add_argument("--baseline-scenes", type=int, nargs="+", default=[24])
    args = parser.parse_args()

    from fixtures.file_server import serve_files

    begin = time.perf_counter()
    print(f"load average at start: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_cube_") as tmp:
        work = Path(tmp)
        root = (args.data or work / "data") / f"{args.size}px-shift{args.shift}"
        listing = root / f"items-{args.base}.json"
        if not listing.exists():
            start = time.perf_counter()
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text(json.dumps(write_scenes(root, args.size, args.base, args.shift)))
            print(f"wrote {args.base} scenes in {time.perf_counter() - start:.0f} s", flush=True)
        base = json.loads(listing.read_text())
        model = write_models(work)
        rows = []
        # The servers run here: their work is in no measure's CPU or memory, but it shares the
        # machine's cores with the run (``server_cpu``).
        with serve_files(root) as plain, serve_files(root, latency_ms=args.latency) as slow:
            for count in args.scenes:
                scenes = scene_set(base, root, count)
                row: dict = {"scenes": count, "assets": 11 * count}
                for latency, server in ((0.0, plain), (args.latency, slow)):
                    items = []
                    for item in scenes:
                        served = server.served_item(item)
                        served["local"] = {k: a["href"] for k, a in item["assets"].items()}
                        items.append(served)
                    items_path = work / f"items-{count}-{latency:g}.json"
                    items_path.write_text(json.dumps(items))
                    if latency == 0.0:
                        for method in MEASURES:
                            size = ["--size", str(args.size)]
                            row[method] = run_child([method, str(items_path), *size], args.timeout)
                            print(f"{count} {method}: {row[method]}", flush=True)
                    path = write_workflow(work, f"{count}-{latency:g}", items, model, args.size)
                    requests = sum(server.counts.values())
                    result = whole_run(path, args.timeout)
                    result["requests"] = sum(server.counts.values()) - requests
                    row[f"run {latency:g}"] = result
                    print(f"{count} run {latency:g} ms: {result} (load {load()})", flush=True)
                    if args.baseline and latency == 0.0 and count in args.baseline_scenes:
                        row["baseline"] = whole_run(path, args.timeout, args.baseline.resolve())
                        print(f"{count} baseline: {row['baseline']} (load {load()})", flush=True)
                # Read from the files, not served: no server shares the run's cores, as a
                # remote object store would not.
                path = write_workflow(
                    work, f"{count}-files", scenes, model, args.size, allowed_paths=[str(root)]
                )
                row["run files"] = {**whole_run(path, args.timeout), "requests": 0}
                print(f"{count} run files: {row['run files']} (load {load()})", flush=True)
                rows.append(row)
        report(rows, args)
    print(f"\nload average at end: {load()}; total {time.perf_counter() - begin:.0f} s")


def report(rows: list[dict], args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    chunks = (args.size / CHUNK) ** 2  # 512-px chunks in the scenes' area
    print(f"\nmachine: {machine()}\nversions: {versions()}")
    print(
        f"scenes {args.size} px, COG tiles {TILE} px DEFLATE + predictor 2, {CLOUD_FRACTION:.0%} "
        f"clouds; runs at default settings (tile 4096, chunk 512 px) with a tiny encoder\n"
    )
    print(
        "| scenes | read over | floor CPU s | run CPU s | embed + classify s | ours CPU s "
        "| ours / floor | wall s | cores busy | with server | worker VmHWM MiB | requests/asset "
        "| vs HTTP 0 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        floor_cpu = row["floor"]["cpu"]
        first = None
        for key in (k for k in row if k.startswith("run ")):
            run = row[key]
            stages = run["stages"]
            ours = _composites(run)
            first = first or run
            cells = [
                row["scenes"],
                "files" if key == "run files" else f"HTTP, {key.split()[1]} ms",
                f"{floor_cpu:.1f}",
                f"{run['cpu']:.1f}",
                f"{stages.get('embed', 0.0) + stages.get('classify', 0.0):.1f}",
                f"{ours:.1f}",
                f"{ours / floor_cpu:.2f}x",
                f"{run['wall']:.1f}",
                f"{_busy(run, cores):.2f}",
                f"{_busy(run, cores, with_server=True):.2f}",
                f"{run['worker_peak_kib'] / 1024:,.0f}",
                f"{run['requests'] / row['assets']:.2f}" if run["requests"] else "-",
                f"CPU {run['cpu'] / first['cpu']:.2f}x, wall {run['wall'] / first['wall']:.2f}x",
            ]
            print("| " + " | ".join(str(c) for c in cells) + " |")
    print(
        "\n| scenes | composites CPU s | decode s | masking s | medians s | rest s | / floor "
        "| peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        split = row["split"]
        parts = [f"{split[k]:.1f} ({100 * split[k] / split['cpu']:.0f} %)" for k in SPLIT]
        print(
            f"| {row['scenes']} | {split['cpu']:.1f} | {' | '.join(parts)} | "
            f"{split['cpu'] / row['floor']['cpu']:.2f}x | {split['peak_kib'] / 1024:,.0f} |"
        )
    print(
        "\n| scenes | chunk's floor share s | ours whole run, per chunk s | composite_chunk s "
        "| odc-stac s | peak MiB ours / odc-stac | = reference (chunk, odc-stac, stored) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ours = _composites(row["run 0"])
        share = row["floor"]["cpu"] / chunks
        ref = row["chunk reference"]["digest"]
        same = [
            "yes" if row[k]["digest"] == ref else "NO"
            for k in ("chunk ours", "chunk odc-stac", "split")
        ]
        mine, odc = row["chunk ours"], row["chunk odc-stac"]
        print(
            f"| {row['scenes']} | {share:.2f} | {ours / chunks:.2f} ({ours / chunks / share:.1f}x) "
            f"| {mine['cpu']:.2f} ({mine['cpu'] / share:.1f}x) | {odc['cpu']:.2f} "
            f"({odc['cpu'] / share:.1f}x) | {mine['peak_kib'] / 1024:,.0f} / "
            f"{odc['peak_kib'] / 1024:,.0f} | {', '.join(same)} |"
        )
    compared = [row for row in rows if "baseline" in row]
    if compared:
        print(
            "\n| scenes | baseline CPU s | ours CPU s | baseline / floor | ours / floor "
            "| baseline / ours | wall s ours / baseline | cores busy ours / baseline |"
        )
        print("|---|---|---|---|---|---|---|---|")
    for row in compared:
        base, ours, floor_cpu = row["baseline"], row["run 0"], row["floor"]["cpu"]
        print(
            f"| {row['scenes']} | {_composites(base):.1f} | {_composites(ours):.1f} "
            f"| {_composites(base) / floor_cpu:.1f}x | {_composites(ours) / floor_cpu:.2f}x "
            f"| {_composites(base) / _composites(ours):.1f}x "
            f"| {ours['wall']:.0f} / {base['wall']:.0f} "
            f"| {_busy(ours, cores):.2f} / {_busy(base, cores):.2f} |"
        )


def _busy(run: dict, cores: int, with_server: bool = False) -> float:
    """A run's cores busy: its CPU seconds (and the file server's, ``with_server``) over its
    wall seconds times the machine's cores."""
    cpu = run["cpu"] + (run["server_cpu"] if with_server else 0.0)
    return cpu / (run["wall"] * cores)


def _composites(run: dict) -> float:
    """A run's CPU seconds less its own embed and classify stage seconds."""
    stages = run["stages"]
    return run["cpu"] - stages.get("embed", 0.0) - stages.get("classify", 0.0)


if __name__ == "__main__":
    main()
