"""Memory of `sample` on class maps of growing size, against reading the map whole.

Two synthetic uint8 class maps (5 classes in 100-pixel blocks, tiled GeoTIFF, nodata 0) of
``--sides`` pixels a side are written block by block. Each measure runs in its own child process,
which reports its own peak resident memory (VmHWM) and wall time: ``sample`` draws
``--points`` points (two passes over the map, block by block), the baseline reads the whole map
into memory and counts its classes (what a tool without blocks does first). GDAL's block cache,
which by default may grow to 5 % of the machine's memory whatever reads through it, is held to
``--gdal-cache`` MiB in both, so the peaks show what the code itself keeps. Measures alternate,
``--repeats`` times; the table holds medians.

    python bench/assess.py [--sides 4096,16384] [--points 1000] [--repeats 3] [--gdal-cache 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the pipeline package

from bench.machine import machine

ROOT = Path(__file__).resolve().parents[1]

_PEAK = """
import time
from pathlib import Path
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
peak = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(seconds, int(peak.split()[1]) // 1024)
"""
MEASURES = {
    "sample": (
        "from pipeline.assess.design import sample_map\n"
        "sample_map('{map}', {points}, '{out}', seed=0)"
    ),
    "read whole (baseline)": (
        "import numpy as np, rasterio\n"
        "from pipeline.assess.design import sample_map  # the same imports as the sample\n"
        "counts = np.bincount(rasterio.open('{map}').read(1).ravel())"
    ),
}


def write_map(path: Path, side: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": "uint8",
        "crs": "EPSG:32631", "transform": from_origin(500_000, 4_800_000, 10, 10), "nodata": 0,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "DEFLATE",
    }  # fmt: skip
    rng = np.random.default_rng(side)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side, 1024):
            blocks = rng.choice(6, size=(12, side // 100 + 1), p=[0.02, 0.4, 0.3, 0.18, 0.09, 0.01])
            strip = np.kron(blocks, np.ones((100, 100), np.uint8))
            height = min(1024, side - row)
            offset = row % 100
            dst.write(strip[offset : offset + height, :side].astype(np.uint8), 1,
                      window=Window(0, row, side, height))  # fmt: skip


def measure(kind: str, gdal_cache: int, **fields) -> tuple[float, int]:
    code = _PEAK.format(body=MEASURES[kind].format(**fields))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GDAL_CACHEMAX": str(gdal_cache)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env
    )
    seconds, peak = done.stdout.split()
    return float(seconds), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="4096,16384", help="map sides in pixels")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gdal-cache", type=int, default=64, help="GDAL_CACHEMAX, MiB")
    args = parser.parse_args()
    sides = [int(s) for s in args.sides.split(",")]
    results: dict[tuple[int, str], list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="timesenclip-bench-assess-") as tmp:
        for side in sides:
            write_map(Path(tmp) / f"map-{side}.tif", side)
        for repeat in range(args.repeats):
            for side in sides:
                for kind in MEASURES:
                    fields = {"map": f"{tmp}/map-{side}.tif", "out": f"{tmp}/points-{side}"}
                    results.setdefault((side, kind), []).append(
                        measure(kind, args.gdal_cache, points=args.points, **fields)
                    )
            print(f"repeat {repeat + 1} done", file=sys.stderr)
    print(f"machine: {machine()}; python {platform.python_version()}")
    print(
        f"{args.points} points; GDAL_CACHEMAX {args.gdal_cache} MiB; medians of {args.repeats} "
        "alternating repeats"
    )
    print("| map | measure | peak MiB | seconds |")
    print("|---|---|---|---|")
    for (side, kind), runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        peak = statistics.median(p for _, p in runs)
        print(f"| {side:,} x {side:,} px ({side * side / 2**20:,.0f} MiB) | {kind} | {peak:,.0f} "
              f"| {seconds:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
