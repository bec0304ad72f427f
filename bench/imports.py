"""The cost of ``import timesenclip``: wall time of a fresh interpreter, against a bare one.

Each repeat starts fresh child processes back to back: ``pass`` (the interpreter alone, the
baseline), ``import timesenclip`` (the lazy Python face) and ``timesenclip.embed`` (its first use,
which imports the pipeline, torch and dask). Repeats interleave; the table holds medians, the
min-max spread, and each median less the baseline's.

    python bench/imports.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the pipeline package

from bench.machine import machine

CASES = {
    "interpreter (baseline)": "pass",
    "import timesenclip": "import timesenclip",
    "timesenclip.embed (first use)": "import timesenclip; timesenclip.embed",
}


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, code in CASES.items():
            times[name].append(seconds(code))
    print(f"{machine()}; Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'child process':32} {'median s':>9} {'min-max s':>13} {'less baseline s':>16}")
    base = statistics.median(times["interpreter (baseline)"])
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{name:32} {median:9.3f} {spread:>13} {median - base:16.3f}")


if __name__ == "__main__":
    main()
