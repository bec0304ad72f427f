"""Cube throughput and peak memory: build_cube (stackstac + dask) against a plain rasterio read.

Writes a year of synthetic 10-band + SCL scenes (two per month, ``--size`` px square), then
composites them twice per scene count, each run in its own child process so that its peak RSS
(``os.wait4`` rusage) is its own:

- ``build_cube``: the pipeline's lazy cube, computed with dask's threaded scheduler;
- ``rasterio``: every band file read whole into one (scenes, band, y, x) array, masked, offset
  and reduced with ``numpy.nanmedian`` per month.

The 4x run repeats each scene's files under four names (dates shifted 1-3 days, same month), so
it reads four times the data. Both methods must give identical composites (checked by digest).

    python bench/cube.py                      # 384 x 384 px, 24 vs 96 scenes, 512 px chunks
    python bench/cube.py --size 512           # the size of one default chunk (about 3 minutes)
"""

from __future__ import annotations

import argparse
import copy
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
import time
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path, and
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/encoder.py would shadow encoder

from bench.machine import machine

MEASURE = "--measure"


def write_items(root: Path, size: int, factors: tuple[int, ...]) -> dict[int, Path]:
    """A year of synthetic scenes, and per factor an items file holding each scene that often.

    Copies get new ids, dates 1-3 days later (same month) and their own files.
    """
    from fixtures.synthetic import write_synthetic_collection

    written = write_synthetic_collection(
        root / "scenes", shape=(size, size), boa_offset_applied=None
    )
    paths = {}
    for factor in factors:
        items = list(written.items)
        for copy_index in range(1, factor):
            items += [_copied_item(item, root, copy_index) for item in written.items]
        paths[factor] = root / f"items_x{factor}.json"
        paths[factor].write_text(json.dumps(items))
    return paths


def _copied_item(item: dict, root: Path, copy_index: int) -> dict:
    item = copy.deepcopy(item)
    when = datetime.datetime.fromisoformat(item["properties"]["datetime"])
    when += datetime.timedelta(days=copy_index)
    item["properties"]["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    item["id"] = f"{item['id']}_copy{copy_index}"
    folder = root / f"copy{copy_index}" / item["id"]
    folder.mkdir(parents=True, exist_ok=True)
    for asset in item["assets"].values():
        target = folder / Path(asset["href"]).name
        shutil.copyfile(asset["href"], target)
        asset["href"] = str(target)
    return item


def cube_composite(items: list[dict], size: int, chunk: int) -> np.ndarray:
    from fixtures.synthetic import default_dates
    from pipeline.cube import build_cube

    xmin, ymax = 500000.0, 4800000.0
    bounds = (xmin, ymax - 10.0 * size, xmin + 10.0 * size, ymax)
    year = default_dates()[0].year
    cube = build_cube(items, epsg=32631, bounds=bounds, year=year, chunk_size=chunk)
    return cube["composite"].values


def rasterio_composite(items: list[dict], size: int, chunk: int) -> np.ndarray:
    """The baseline: every file read whole with rasterio, numpy.nanmedian per month."""
    import rasterio
    from rasterio.enums import Resampling

    from encoder.preprocess import BANDS
    from pipeline.harmonize import harmonization
    from pipeline.sentinel2 import DEFAULT_CLOUD_MASK
    from pipeline.stac import EARTH_SEARCH_ASSETS

    def read(href: str) -> np.ndarray:  # 20 m files upsampled x2 by nearest on read
        with rasterio.open(href) as src:
            return src.read(1, out_shape=(size, size), resampling=Resampling.nearest)

    values = np.empty((len(items), len(BANDS), size, size), np.float32)
    scl = np.empty((len(items), size, size), np.uint8)
    for t, item in enumerate(items):
        for b, band in enumerate(BANDS):
            values[t, b] = read(item["assets"][EARTH_SEARCH_ASSETS[band]]["href"])
        scl[t] = read(item["assets"][EARTH_SEARCH_ASSETS["SCL"]]["href"])
    offsets = np.array([harmonization(item).offset for item in items], np.float32)
    months = np.array([int(item["properties"]["datetime"][5:7]) for item in items])
    dropped = np.isin(scl, DEFAULT_CLOUD_MASK) | (values == 0).any(axis=1)
    values -= offsets[:, None, None, None]
    values[np.broadcast_to(dropped[:, None], values.shape)] = np.nan
    composite = np.full((12, len(BANDS), size, size), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        for month in range(1, 13):
            if (months == month).any():
                composite[month - 1] = np.nanmedian(values[months == month], axis=0)
    return composite


METHODS = {"build_cube": cube_composite, "rasterio": rasterio_composite}


def measure(method: str, items_path: Path, size: int, chunk: int) -> None:
    """Child process: import everything, then time one composite and print a JSON line."""
    import pipeline.cube  # noqa: F401  (imports are not part of the measure)

    items = json.loads(items_path.read_text())
    imported_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    composite = METHODS[method](items, size, chunk)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(np.nan_to_num(composite, nan=-1.0).tobytes()).hexdigest()
    print(json.dumps({"seconds": seconds, "imported_kib": imported_kib, "digest": digest}))


def run_child(method: str, items_path: Path, size: int, chunk: int) -> dict:
    """Run one measure in a child process; add its own peak RSS from os.wait4."""
    command = [sys.executable, __file__, MEASURE, method, str(items_path)]
    command += ["--size", str(size), "--chunk", str(chunk)]
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, stdout=out)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if child.returncode != 0:
        raise SystemExit(f"{method} child failed with status {child.returncode}")
    return {**json.loads(text.strip().splitlines()[-1]), "peak_kib": usage.ru_maxrss}


def versions() -> str:
    import dask
    import rasterio
    import stackstac

    return (
        f"python {platform.python_version()}, numpy {np.__version__}, dask {dask.__version__}, "
        f"stackstac {stackstac.__version__}, rasterio {rasterio.__version__}, "
        f"GDAL {rasterio.__gdal_version__}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == MEASURE:
        parser = argparse.ArgumentParser(prog=f"cube.py {MEASURE}")
        parser.add_argument("method", choices=METHODS)
        parser.add_argument("items", type=Path)
        parser.add_argument("--size", type=int, required=True)
        parser.add_argument("--chunk", type=int, required=True)
        args = parser.parse_args(sys.argv[2:])
        measure(args.method, args.items, args.size, args.chunk)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="scene width and height in px")
    parser.add_argument("--chunk", type=int, default=512, help="build_cube chunk_size in px")
    parser.add_argument("--factor", type=int, default=4, help="scene multiple of the large run")
    args = parser.parse_args()

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_cube_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        runs = write_items(root, args.size, (1, args.factor))
        print(f"wrote synthetic scenes in {time.perf_counter() - start:.0f} s")
        rows = []
        for items_path in runs.values():
            scenes = len(json.loads(items_path.read_text()))
            results = {m: run_child(m, items_path, args.size, args.chunk) for m in METHODS}
            same = len({r["digest"] for r in results.values()}) == 1
            for method, result in results.items():
                rows.append((method, scenes, result, same))

    print(f"\nmachine: {machine()}\nversions: {versions()}")
    print(f"scenes {args.size} x {args.size} px, build_cube chunk_size {args.chunk}\n")
    header = ("method", "scenes", "seconds", "scene-Mpx/s", "peak RSS MiB", "after imports")
    print("| " + " | ".join(header) + " | identical |")
    print("|" + "---|" * (len(header) + 1))
    for method, scenes, result, same in rows:
        megapixels = scenes * args.size**2 / 1e6
        print(
            f"| {method} | {scenes} | {result['seconds']:.1f} | "
            f"{megapixels / result['seconds']:.1f} | {result['peak_kib'] / 1024:.0f} | "
            f"{result['imported_kib'] / 1024:.0f} | {'yes' if same else 'NO'} |"
        )
    print(f"\ntotal {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
