"""The fault battery: the demo workflow under injected faults and bad input, against a clean run.

Synthetic scenes (the demo inputs with 4 dates, one chunk per tile, embeddings off) are served
over HTTP by the loopback file server (Range requests, as object stores answer them) and their
items by a local STAC API (``rustac serve``), all on 127.0.0.1. Each row is one run of the public
entry points (``run_workflow`` on ``load_workflow``, or the CLI's ``main`` where the exit status
matters) in a fresh output folder:

- clean: no fault, the reference maps;
- file server 503 / reset / truncate at each ``--rates`` share of requests, default settings;
- mixed faults at 30 % with ``cube.read_retries: 0`` and ``stac.on_bad_asset: skip``, then the
  same command again once the faults stop (the rerun redoes the tiles with skips);
- the flaky STAC proxy in front of the API at each rate (503 and resets; ``stac.retries: 8``);
- an asset whose file CRS disagrees with its item (``raise``, then ``skip``);
- an asset href outside ``stac.allowed_paths``; a YAML alias bomb as the workflow file;
- a second run on a folder another process holds the lock of; a read-only output folder (mode
  555, or as root, whom modes do not stop, a read-only tmpfs; not run where it cannot mount).

"maps equal" compares the SHA-256 of every map (``*.tif``) of the region with the clean run's.

    python bench/faults.py [--rates 0.1,0.3] [--quick] [--budget 1500]

``--quick`` runs the 30 % rate only. Rows not started within ``--budget`` seconds are listed as
not run. Run from the repository root or as a file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the pipeline package

import rasterio
import urllib3
import yaml

from bench.machine import machine
from fixtures.demo import write_demo_inputs
from fixtures.file_server import FileServer, serve_files
from fixtures.lock_holder import LockHolderError, hold_lock
from fixtures.stac_proxy import serve_stac_proxy
from fixtures.stac_server import serve_stac
from pipeline.cli import main
from pipeline.run.execute import RunSummary, run_workflow
from pipeline.workflow.load import load_workflow
from timesenclip.common.errors import TimeSenCLIPError

DATES = [date(2023, month, 15) for month in (3, 6, 8, 10)]
REGION = "synthetic"
SEED = 7
LOCK_WAIT = 30.0  # s for the process holding a lock to say it has it


@dataclass
class Row:
    fault: str
    rate: str
    outcome: str
    seconds: float | None
    equal: str
    injected: str = "0"


class Battery:
    """The demo inputs under ``root`` and a run per row, each in its own folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workflow, synthetic = write_demo_inputs(root, dates=DATES)
        self.workflow["cube"] = {**self.workflow["cube"], "chunk_size": 128}  # one chunk a tile
        self.workflow["outputs"] = {**self.workflow["outputs"], "embeddings": False}
        self.collection, self.items = synthetic.collection, synthetic.items
        self.clean: dict[str, str] = {}
        self.runs = 0

    def folder(self) -> Path:
        self.runs += 1
        return self.root / "runs" / f"{self.runs:02d}"

    @contextlib.contextmanager
    def served(self, items: list[dict] | None = None, **faults) -> Iterator[tuple[FileServer, str]]:
        """(file server, STAC API url): the scenes over HTTP, their items over a STAC API."""
        with serve_files(self.root / "data", seed=SEED, **faults) as files:
            served = [files.served_item(item) for item in items or self.items]
            with serve_stac(self.collection, served, self.root / "api" / str(self.runs)) as url:
                yield files, url

    def workflow_file(
        self,
        folder: Path,
        url: str,
        stac: dict | None = None,
        cube: dict | None = None,
        out: Path | None = None,
    ) -> Path:
        """The workflow searching ``url`` with these changes, written into ``folder``."""
        workflow = self.workflow
        data = {
            **workflow,
            "stac": {**workflow["stac"], "url": url, **(stac or {})},
            "cube": {**workflow["cube"], **(cube or {})},
            "outputs": {**workflow["outputs"], "dir": str(out or folder / "maps")},
        }
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "workflow.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def equal(self, folder: Path) -> str:
        """Whether the maps of the run in ``folder`` are the clean run's, byte for byte."""
        maps = digests(folder / "maps" / REGION)
        if not maps:
            return "no maps"
        return "yes" if maps == self.clean else "no"


def digests(region: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in region.glob("*.tif")}


def finished(summary: RunSummary) -> str:
    return (
        f"finished: {summary.tiles} tiles, {summary.skipped_assets} skips, "
        f"{summary.tiles_to_retry} tiles to retry"
    )


def attempt(path: Path) -> tuple[str, float]:
    """Run the workflow at ``path``: its summary, or the class and message of what it raised;
    and the seconds it took."""
    start = time.perf_counter()
    try:
        outcome = finished(run_workflow(load_workflow(path), progress=False))
    except Exception as error:  # the row reports whatever the run raised
        kind = "refused" if isinstance(error, (TimeSenCLIPError, OSError)) else "failed"
        outcome = f"{kind}: {type(error).__name__}: {error}"
    return outcome, time.perf_counter() - start


def cli(path: Path) -> tuple[str, float]:
    """``timesenclip run PATH --quiet``: its exit status and message, and the seconds taken."""
    start, err = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(path), "--quiet"])
    return f"exit {code}: {err.getvalue()}", time.perf_counter() - start


def short(text: str, root: Path, width: int = 200) -> str:
    """One table cell: one line, the temporary folder as TMP, at most ``width`` characters."""
    line = " ".join(text.replace(str(root), "TMP").split()).replace("|", "/")
    return line if len(line) <= width else line[: width - 3] + "..."


def injected(server) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(server.injected.items())) or "0"


# --- the rows -------------------------------------------------------------------------------


def clean(b: Battery) -> list[Row]:
    folder = b.folder()
    with b.served() as (_, url):
        outcome = attempt(b.workflow_file(folder, url))
    b.clean = digests(folder / "maps" / REGION)
    return [Row("none (clean baseline)", "0", *outcome, "reference")]


def file_fault(b: Battery, kind: str, rate: float) -> list[Row]:
    folder = b.folder()
    with b.served(fault_rate=rate, faults=[kind]) as (files, url):
        outcome = attempt(b.workflow_file(folder, url))
    return [Row(f"file server {kind}", f"{rate:.0%}", *outcome, b.equal(folder), injected(files))]


def mixed_skip(b: Battery) -> list[Row]:
    """No read retries and ``skip``: honest skips, then the rerun after the outage."""
    folder, rate = b.folder(), 0.3
    options = {"stac": {"on_bad_asset": "skip"}, "cube": {"read_retries": 0}}
    with b.served(fault_rate=rate) as (files, url):
        path = b.workflow_file(folder, url, **options)
        first = attempt(path)
        first_equal, first_injected = b.equal(folder), injected(files)
        files.fault_rate = 0.0  # the outage is over
        again = attempt(path)
    name = "file server mixed, read_retries 0, skip"
    return [
        Row(name, f"{rate:.0%}", *first, first_equal, first_injected),
        Row(f"{name}: same command again", "0", *again, b.equal(folder)),
    ]


def proxy_fault(b: Battery, rate: float) -> list[Row]:
    folder = b.folder()
    with b.served() as (_, url), serve_stac_proxy(url, fault_rate=rate, seed=SEED) as proxy:
        outcome = attempt(b.workflow_file(folder, proxy.url, stac={"retries": 8}))
    fault = "STAC proxy 503/reset, stac.retries 8"
    return [Row(fault, f"{rate:.0%}", *outcome, b.equal(folder), injected(proxy))]


def with_asset(b: Battery, path: Path) -> list[dict]:
    """The items, the red band of the first pointing to ``path``, a copy of its file."""
    items = json.loads(json.dumps(b.items))
    asset = items[0]["assets"]["red"]
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(asset["href"], path)
    asset["href"] = str(path)
    return items


def wrong_crs(b: Battery) -> list[Row]:
    """A file in EPSG:32632 under an item that says 32631, read as a local file."""
    wrong = b.root / "data" / "scenes" / "wrong-crs" / "B04.tif"
    items = with_asset(b, wrong)
    with rasterio.open(wrong, "r+") as ds:
        ds.crs = rasterio.CRS.from_epsg(32632)
    rows = []
    with serve_stac(b.collection, items, b.root / "api" / "crs") as url:
        for on_bad in ("raise", "skip"):
            folder = b.folder()
            outcome = attempt(b.workflow_file(folder, url, stac={"on_bad_asset": on_bad}))
            fault = f"asset CRS differs from its item, on_bad_asset {on_bad}"
            rows.append(Row(fault, "1 asset", *outcome, b.equal(folder)))
    return rows


def outside_href(b: Battery) -> list[Row]:
    items = with_asset(b, b.root / "outside" / "B04.tif")
    folder = b.folder()
    with serve_stac(b.collection, items, b.root / "api" / "outside") as url:
        outcome = attempt(b.workflow_file(folder, url))
    return [Row("href outside stac.allowed_paths", "1 asset", *outcome, b.equal(folder))]


def alias_bomb(b: Battery) -> list[Row]:
    lines = ['l0: &l0 "lol"']  # the billion laughs: 9 levels of 9 aliases of the level below
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    folder = b.folder()
    folder.mkdir(parents=True)
    path = folder / "workflow.yaml"
    path.write_text("\n".join(lines) + "\n")
    return [Row("YAML alias bomb as workflow file", "1 file", *cli(path), "no maps")]


def locked(b: Battery) -> list[Row]:
    """A second run while another process holds the output folder's lock."""
    folder = b.folder()
    with b.served() as (_, url):
        path = b.workflow_file(folder, url)
        try:
            holder = hold_lock(folder / "maps", LOCK_WAIT)
        except LockHolderError as error:
            outcome = (str(error), None)
        else:
            try:
                outcome = cli(path)
            finally:
                holder.communicate("", timeout=LOCK_WAIT)
    return [Row("second run on a locked folder", "1 run", *outcome, b.equal(folder))]


def read_only(b: Battery) -> list[Row]:
    folder, root = b.folder(), os.geteuid() == 0
    fault = f"read-only output folder ({'a read-only tmpfs: as root' if root else 'mode 555'})"
    out = folder / "ro"
    out.mkdir(parents=True)
    if not root:
        out.chmod(0o555)
    else:  # root writes through any mode bits: a read-only mount is the only way
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)], capture_output=True
        )
        if done.returncode:
            reason = done.stderr.decode() or f"mount exited {done.returncode}"
            outcome = f"not run: as root, and no read-only mount ({reason})"
            return [Row(fault, "-", outcome, None, "-", "-")]
    try:
        with b.served() as (_, url):
            outcome = cli(b.workflow_file(folder, url, out=out / "maps"))
    finally:
        if not root:
            out.chmod(0o755)
        else:
            subprocess.run(["umount", "-l", str(out)], check=False)
    return [Row(fault, "1 folder", *outcome, "no maps")]


# --- the table ------------------------------------------------------------------------------


def battery(rates: list[float]) -> list[Callable[[Battery], list[Row]]]:
    """The rows in order; the clean baseline first, as the others compare with it."""
    rows: list[Callable[[Battery], list[Row]]] = [clean]
    rows += [
        partial(file_fault, kind=k, rate=r) for k in ("503", "reset", "truncate") for r in rates
    ]
    rows += [mixed_skip, *(partial(proxy_fault, rate=r) for r in rates)]
    return [*rows, wrong_crs, outside_href, alias_bomb, locked, read_only]


def label(make: Callable) -> str:
    """A row's name before it has run: its function and arguments."""
    if isinstance(make, partial):
        return " ".join([make.func.__name__, *(f"{k}={v}" for k, v in make.keywords.items())])
    return make.__name__


def versions() -> str:
    rustac = subprocess.run(
        [str(Path(sys.executable).parent / "rustac"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"python {platform.python_version()}, rasterio {rasterio.__version__} (GDAL "
        f"{rasterio.__gdal_version__}), urllib3 {urllib3.__version__}, {rustac or 'rustac ?'}"
    )


def main_bench(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="0.1,0.3", help="fault shares, comma separated")
    parser.add_argument("--quick", action="store_true", help="the 30 %% rate only")
    parser.add_argument("--budget", type=float, default=1500.0, help="s before rows are left out")
    args = parser.parse_args(argv)
    rates = [0.3] if args.quick else [float(r) for r in args.rates.split(",")]
    started = time.monotonic()
    results: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="faults-bench-") as tmp:
        b = Battery(Path(tmp))
        for make in battery(rates):
            if make is not clean and time.monotonic() - started > args.budget:
                results.append(Row(label(make), "-", "not run: budget spent", None, "-", "-"))
                continue
            rows = make(b)
            for row in rows:
                row.outcome = short(row.outcome, b.root)
                print(f"{row.fault} {row.rate}: {row.outcome}", file=sys.stderr, flush=True)
            results += rows
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    print(
        f"seed {SEED}; {len(DATES)} dates, 4 tiles of 256 px, one chunk each; total "
        f"{time.monotonic() - started:.0f} s\n"
    )
    print("| fault | rate | outcome | maps equal to clean run | injected | s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        seconds = "" if r.seconds is None else f"{r.seconds:.{1 if r.seconds >= 1 else 2}f}"
        print(f"| {r.fault} | {r.rate} | {r.outcome} | {r.equal} | {r.injected} | {seconds} |")


if __name__ == "__main__":
    main_bench()
