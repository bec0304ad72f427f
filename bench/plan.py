"""Planning time and client memory as the catalogue grows: a region at 1x to 4096x its tiles.

A square region (``--side-km`` at 1x, 1024-px tiles of 10 m by default) is scaled by 1, 16, 256 and
4096 in area around a fixed centre; a synthetic Sentinel-2 L2A catalogue (Earth Search-like item
dicts of about 10 KB with 17 assets, MGRS-like 109.8 km squares on a 100 km grid per UTM zone,
73 items a year per square) is written for each region plus a margin into a temporary folder.
Every (scale, source) is planned by ``make_plan`` in its own child process, which reports the
planning time and its own peak resident memory (``VmHWM`` of ``/proc/self/status``); a child
that only imports the planner is the memory baseline. Children of one repeat run back to back,
repeats interleave, and the table holds medians with the min-max spread.

    python bench/plan.py [--scales 1,16,256,4096] [--parquet-scales ...] [--api-scales 1,16]
    python bench/plan.py --europe     # Europe from one year's ndjson catalogue, France dry run

Sources: ``ndjson`` and ``parquet`` (stac-geoparquet) files, and ``api``: ``rustac serve`` over
the same items on 127.0.0.1 (one search per tile, through the planner's concurrent searches).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the pipeline package

from bench.machine import machine

YEAR = 2023
REVISIT_DAYS = 5  # two satellites: 73 acquisitions a year per square
SQUARE = 109_800.0  # metres: a Sentinel-2 granule, on a 100 km grid (9.8 km overlap)
CENTRE = (10.0, 47.0)  # lon, lat of the scaled region
EUROPE = (-25.0, 34.0, 45.0, 72.0)
FRANCE = (-5.2, 41.3, 9.6, 51.1)
# Earth Search v1 band assets: (key, band name, centre wavelength, gsd).
BAND_ASSETS = (
    ("coastal", "B01", 0.443, 60),
    ("blue", "B02", 0.490, 10),
    ("green", "B03", 0.560, 10),
    ("red", "B04", 0.665, 10),
    ("rededge1", "B05", 0.704, 20),
    ("rededge2", "B06", 0.740, 20),
    ("rededge3", "B07", 0.783, 20),
    ("nir", "B08", 0.842, 10),
    ("nir08", "B8A", 0.865, 20),
    ("nir09", "B09", 0.945, 60),
    ("swir16", "B11", 1.610, 20),
    ("swir22", "B12", 2.190, 20),
)
OTHER_ASSETS = ("scl", "aot", "wvp", "visual", "thumbnail")


# --- synthetic catalogue ----------------------------------------------------------------------


def squares(bbox: tuple[float, float, float, float]) -> Iterator[tuple[int, float, float, list]]:
    """(epsg, x0, y0, lon/lat ring) of the MGRS-like squares meeting ``bbox`` (northern zones)."""
    from pipeline.geo.grid import transformer

    west, south, east, north = bbox
    for zone in range(int((west + 180) // 6) + 1, int((east + 180) // 6) + 2):
        if zone > 60:
            break
        epsg, zone_west = 32600 + zone, -180.0 + 6 * (zone - 1)
        to_utm, to_lonlat = transformer(4326, epsg), transformer(epsg, 4326)
        lons = [max(west, zone_west - 0.5), min(east, zone_west + 6.5)]
        if lons[0] >= lons[1]:
            continue
        xs, ys = to_utm.transform([lons[0], lons[0], lons[1], lons[1]], [south, north] * 2)
        for x0 in range(int(min(xs) // 100_000) * 100_000 - 100_000, int(max(xs)) + 1, 100_000):
            for top in range(int(min(ys) // 100_000) * 100_000, int(max(ys)) + 200_000, 100_000):
                # MGRS squares start 40 m west of the 100 km line (e.g. x 399960).
                left, right, bottom = x0 - 40, x0 - 40 + SQUARE, top - SQUARE
                lon, lat = to_lonlat.transform(
                    [left, right, right, left], [top, top, bottom, bottom]
                )
                centre = sum(lon) / 4
                # Squares whose centre lies in the zone (a little past its edges, as MGRS does).
                if not zone_west - 0.3 <= centre <= zone_west + 6.3 or min(lat) < 0:
                    continue
                if min(lon) > east or max(lon) < west or min(lat) > north or max(lat) < south:
                    continue
                ring = [[round(a, 6), round(b, 6)] for a, b in zip(lon, lat, strict=True)]
                yield epsg, float(left), float(top), [*ring, ring[0]]


def item_template(epsg: int, x0: float, top: float, ring: list) -> str:
    """One square's item as JSON with @ID@, @DATE@, @SAT@, @CLOUD@ left to fill per date."""
    zone = epsg % 100
    code = f"{zone:02d}{'CDEFGHJKLMNPQRSTUVWX'[int((ring[0][1] + 80) // 8)]}"
    code += f"{'ABCDEFGHJKLMNPQRSTUVWXYZ'[int(x0 // 100_000) % 24]}"
    code += f"{'ABCDEFGHJKLMNPQRSTUV'[int(top // 100_000) % 20]}"
    lon, lat = [p[0] for p in ring], [p[1] for p in ring]
    base = f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/{zone}/@ID@"

    def band(key: str, name: str, wavelength: float, gsd: int) -> dict:
        side = int(SQUARE // gsd)
        return {
            "href": f"{base}/{name}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": f"{key} ({name}) - {gsd}m",
            "eo:bands": [{"name": key, "common_name": key, "center_wavelength": wavelength}],
            "gsd": gsd,
            "proj:shape": [side, side],
            "proj:transform": [gsd, 0, x0, 0, -gsd, top],
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "bits_per_sample": 15,
                    "spatial_resolution": gsd,
                    "scale": 0.0001,
                    "offset": -0.1,
                }
            ],
            "file:size": 200_000_000 // (gsd // 10) ** 2,
            "roles": ["data", "reflectance"],
        }

    assets = {key: band(key, name, wl, gsd) for key, name, wl, gsd in BAND_ASSETS}
    for key in OTHER_ASSETS:
        assets[key] = {
            "href": f"{base}/{key.upper()}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": key,
            "proj:shape": [5490, 5490],
            "proj:transform": [20, 0, x0, 0, -20, top],
            "file:size": 30_000_000,
            "roles": ["data"],
        }
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
        ],
        "id": "@ID@",
        "collection": "sentinel-2-l2a",
        "bbox": [min(lon), min(lat), max(lon), max(lat)],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "datetime": "@DATE@",
            "platform": "sentinel-2@SAT@",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": "@CLOUD@",
            "proj:epsg": epsg,
            "mgrs:utm_zone": zone,
            "grid:code": f"MGRS-{code}",
            "s2:processing_baseline": "05.09",
            "s2:product_type": "S2MSI2A",
            "s2:product_uri": "S2@SAT@_MSIL2A_@ID@.SAFE",
            "earthsearch:boa_offset_applied": True,
        },
        "links": [
            {"rel": rel, "href": f"https://earth-search.aws.element84.com/v1/{path}"}
            for rel, path in (
                ("self", "collections/sentinel-2-l2a/items/@ID@"),
                ("parent", "collections/sentinel-2-l2a"),
                ("collection", "collections/sentinel-2-l2a"),
                ("root", ""),
            )
        ],
        "assets": assets,
    }
    return json.dumps(item).replace('"@CLOUD@"', "@CLOUD@")


def write_catalogue(bbox: tuple[float, float, float, float], path: Path) -> int:
    """A year of items over ``bbox`` as ndjson; returns how many."""
    count = 0
    rng = random.Random(0)
    start = datetime.datetime(YEAR, 1, 1, 10, 30, tzinfo=datetime.UTC)
    with path.open("w") as out:
        for number, (epsg, x0, top, ring) in enumerate(squares(bbox)):
            template = item_template(epsg, x0, top, ring)
            name = f"{epsg % 100:02d}_{int(x0 // 1000):03d}_{int(top // 1000):04d}"
            for k in range(365 // REVISIT_DAYS):
                when = start + datetime.timedelta(days=k * REVISIT_DAYS + number % REVISIT_DAYS)
                sat = "ab"[k % 2]
                line = (
                    template.replace("@ID@", f"S2{sat.upper()}_{name}_{when:%Y%m%d}_0_L2A")
                    .replace("@DATE@", when.strftime("%Y-%m-%dT%H:%M:%S.000000Z"))
                    .replace("@SAT@", sat)
                    .replace("@CLOUD@", f"{rng.uniform(0, 100):.2f}")
                )
                out.write(line + "\n")
                count += 1
    return count


def write_parquet(ndjson: Path, path: Path, batch: int = 1000) -> None:
    """The ndjson catalogue as stac-geoparquet, ``batch`` items at a time."""
    import asyncio

    import rustac

    async def write() -> None:
        with ndjson.open() as lines:
            chunk = lambda: [json.loads(line) for line in itertools.islice(lines, batch)]  # noqa: E731
            batches = iter(chunk, [])
            writer = await rustac.GeoparquetWriter.open(next(batches), str(path))
            for items in batches:
                await writer.write(items)
            await writer.finish()

    asyncio.run(write())


def collection() -> dict:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "sentinel-2-l2a",
        "description": "Synthetic Sentinel-2 L2A items for bench/plan.py",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[f"{YEAR}-01-01T00:00:00Z", f"{YEAR}-12-31T23:59:59Z"]]},
        },
        "links": [],
    }


def square_region(side_km: float, scale: int) -> tuple[float, float, float, float]:
    """A square of ``side_km * sqrt(scale)`` km around ``CENTRE``, in lon/lat."""
    half = side_km * math.sqrt(scale) / 2
    lon, lat = CENTRE
    dlat = half / 111.2
    dlon = half / (111.2 * math.cos(math.radians(lat)))
    return (lon - dlon, lat - dlat, lon + dlon, lat + dlat)


def widened(bbox: tuple[float, ...], degrees: float) -> tuple[float, float, float, float]:
    west, south, east, north = bbox
    return (west - degrees, south - degrees, east + degrees, north + degrees)


def write_workflow(root: Path, name: str, bbox, stac: dict, tile_size: int) -> Path:
    import yaml

    from fixtures.tiny import write_tiny_model

    # The dry run checks the checkpoint and embeds the prompts: a tiny model keeps that offline.
    checkpoint, clip = write_tiny_model(root / "model")
    data = {
        "name": name,
        "year": YEAR,
        "regions": [{"name": name, "bbox": [round(v, 6) for v in bbox]}],
        "stac": stac,
        "cube": {"tile_size": tile_size, "chunk_size": min(512, tile_size)},
        "model": {"checkpoint": str(checkpoint), "clip": {"model": f"local-dir:{clip}"}},
        "tasks": [{"name": "land_cover", "classes": "land_cover"}],
        "outputs": {"dir": str(root / "maps" / name)},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- measuring ----------------------------------------------------------------------------------


def peak_kib() -> int:
    """This process's own peak resident memory (VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def child(workflow_path: Path | None, describe_too: bool) -> None:
    """Plan one workflow (or only import the planner) and print one JSON line of figures."""
    from pipeline.plan.report import describe
    from pipeline.plan.scenes import RegionTarget, make_plan
    from pipeline.workflow.load import load_workflow

    figures: dict = {"seconds": 0.0}
    if workflow_path is not None:
        workflow = load_workflow(workflow_path)
        targets = [RegionTarget(r, Path(), Path(), "") for r in workflow.regions]
        start = time.perf_counter()
        plan = make_plan(workflow, targets, concurrency=workflow.stac.concurrency)
        figures["seconds"] = time.perf_counter() - start
        tiles = [t for region in plan.regions for t in region.tiles]
        figures["tiles"] = len(tiles) + sum(len(r.empty) for r in plan.regions)
        figures["chunks"] = sum(plan.chunk_count(t) for t in tiles)
        figures["items"] = len(plan.refs)
        figures["pairs"] = sum(len(t.items) for t in tiles)
        if describe_too:
            start = time.perf_counter()
            describe(plan, workflow, None)
            figures["describe_seconds"] = time.perf_counter() - start
    figures["peak_mib"] = peak_kib() / 1024
    print(json.dumps(figures))


def measure(args: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float], fmt: str) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def scaling(args: argparse.Namespace, root: Path) -> None:
    from fixtures.stac_server import serve_stac

    runs: list[tuple[int, str, Path]] = []
    files: dict[int, Path] = {}
    for scale in sorted(set(args.scales) | set(args.parquet_scales) | set(args.api_scales)):
        bbox = square_region(args.side_km, scale)
        ndjson = root / f"items-{scale}.ndjson"
        start = time.perf_counter()
        count = write_catalogue(widened(bbox, 0.6), ndjson)
        print(
            f"{scale}x: {count:,} items, {ndjson.stat().st_size / 1e6:,.0f} MB ndjson, written in "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
        files[scale] = ndjson
        if scale in args.scales:
            stac = {"file": str(ndjson)}
            workflow = write_workflow(root, f"n{scale}", bbox, stac, args.tile)
            runs.append((scale, "ndjson", workflow))
        if scale in args.parquet_scales:
            parquet = root / f"items-{scale}.parquet"
            write_parquet(ndjson, parquet)
            stac = {"file": str(parquet)}
            runs.append(
                (scale, "parquet", write_workflow(root, f"p{scale}", bbox, stac, args.tile))
            )
    results: dict[tuple[int, str], list[dict]] = {}
    baseline: list[float] = []
    for repeat in range(args.repeats):
        baseline.append(measure([], args.timeout)["peak_mib"])
        for scale, kind, workflow in runs:
            results.setdefault((scale, kind), []).append(measure([str(workflow)], args.timeout))
            print(f"repeat {repeat + 1}: {scale}x {kind} done", file=sys.stderr)
        for scale in args.api_scales:
            with files[scale].open() as lines:
                items = (json.loads(line) for line in lines)
                with serve_stac(collection(), items, root / f"api-{scale}") as url:
                    stac = {"url": url, "concurrency": args.concurrency}
                    bbox = square_region(args.side_km, scale)
                    workflow = write_workflow(root, f"a{scale}", bbox, stac, args.tile)
                    figures = measure([str(workflow)], args.timeout)
            results.setdefault((scale, "api"), []).append(figures)
            print(f"repeat {repeat + 1}: {scale}x api done", file=sys.stderr)
    print(f"machine: {machine()}; python {platform.python_version()}; load {os.getloadavg()}")
    print(
        f"region: {args.side_km:g} km square at 1x around {CENTRE}, {args.tile}-px tiles of 10 m, "
        f"chunk tasks of 512 px; medians (min-max) of {args.repeats} interleaved repeats, each "
        "plan in its own child process; peak = the child's VmHWM"
    )
    print(f"baseline (child importing the planner only): peak {spread(baseline, '.0f')} MiB")
    print(
        "| source | scale | tiles | chunk tasks | items | tile-item pairs | planning s | "
        "peak MiB | s per tile vs 1x |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("ndjson", "parquet", "api"):
        scales = sorted(s for s, k in results if k == kind)
        for scale in scales:
            rows = results[scale, kind]
            first = results[scales[0], kind]
            per_tile = statistics.median(r["seconds"] for r in rows) / rows[0]["tiles"]
            per_tile_1x = statistics.median(r["seconds"] for r in first) / first[0]["tiles"]
            print(
                f"| {kind} | {scale}x | {rows[0]['tiles']:,} | {rows[0]['chunks']:,} | "
                f"{rows[0]['items']:,} | {rows[0]['pairs']:,} | "
                f"{spread([r['seconds'] for r in rows], '.2f')} | "
                f"{spread([r['peak_mib'] for r in rows], '.0f')} | "
                f"{per_tile / per_tile_1x:.2f} |"
            )


def europe(args: argparse.Namespace, root: Path) -> None:
    """Europe (4096-px tiles) from a year's ndjson catalogue; France planned and dry-run."""
    rows = []
    for name, bbox in (("europe", EUROPE), ("france", FRANCE)):
        ndjson = root / f"{name}.ndjson"
        start = time.perf_counter()
        count = write_catalogue(widened(bbox, 0.6), ndjson)
        size = ndjson.stat().st_size / 1e6
        print(
            f"{name}: {count:,} items, {size:,.0f} MB, written in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        workflow = write_workflow(root, name, bbox, {"file": str(ndjson)}, 4096)
        figures = [
            measure([str(workflow), "--describe"], args.timeout) for _ in range(args.repeats)
        ]
        dry = []
        if name == "france":
            for _ in range(args.repeats):
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "pipeline.cli", "run", "--dry-run", str(workflow)],
                    capture_output=True,
                    timeout=args.timeout,
                    check=True,
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                )
                dry.append(time.perf_counter() - start)
        rows.append((name, bbox, count, size, figures, dry))
        ndjson.unlink()
    print(f"machine: {machine()}; python {platform.python_version()}; load {os.getloadavg()}")
    print(
        f"4096-px tiles of 10 m, chunk tasks of 512 px; one year ({YEAR}) of synthetic items; "
        f"medians (min-max) of {args.repeats} runs, each plan in its own child process"
    )
    print(
        "| region | bbox | catalogue | tiles | chunk tasks | items | planning s | describe s | "
        "peak MiB | `run --dry-run` s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, bbox, count, size, figures, dry in rows:
        first = figures[0]
        print(
            f"| {name} | {list(bbox)} | {count:,} items, {size:,.0f} MB | {first['tiles']:,} | "
            f"{first['chunks']:,} | {first['items']:,} | "
            f"{spread([f['seconds'] for f in figures], '.1f')} | "
            f"{spread([f['describe_seconds'] for f in figures], '.1f')} | "
            f"{spread([f['peak_mib'] for f in figures], '.0f')} | "
            f"{spread(dry, '.1f') if dry else '-'} |"
        )


def scale_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=scale_list, default=[1, 16, 256, 4096])
    parser.add_argument("--parquet-scales", type=scale_list, default=[1, 16, 256, 4096])
    parser.add_argument("--api-scales", type=scale_list, default=[1, 16])
    parser.add_argument("--side-km", type=float, default=20.0, help="side of the 1x region")
    parser.add_argument("--tile", type=int, default=1024, help="tile size, px")
    parser.add_argument("--concurrency", type=int, default=8, help="API searches at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="per child, seconds")
    parser.add_argument("--europe", action="store_true", help="Europe and France figures")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--describe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("workflow", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workflow, args.describe)
        return
    with tempfile.TemporaryDirectory(prefix="timesenclip-bench-plan-") as tmp:
        (europe if args.europe else scaling)(args, Path(tmp))


if __name__ == "__main__":
    main()
