"""End-to-end pipeline benchmark: pixels per second by stage, and peak memory as the area grows.

Synthetic Sentinel-2 scenes are served by a local STAC API (rustac) and mapped by ``run_workflow``
on a Dask LocalCluster, for regions of 1x, 4x and 16x the area. Each region runs in a child
process whose process tree (client, scheduler and workers) is sampled every 0.1 s: the peak of
the tree's summed resident memory, and each process's own peak (``VmHWM`` in /proc, which the
kernel keeps per process, unlike ``ru_maxrss`` which a fork inherits), of which the table shows
the largest. The 1x run is the baseline the others are compared against. Peak memory must stay
flat: the work is done chunk by chunk, so a larger area means more chunks, not larger ones.

    python bench/pipeline.py [--side 128] [--scales 1 4 16] [--full-model]

The encoder is a tiny random one by default (the embed stage then costs little); ``--full-model``
uses the published architecture (random weights), which on a CPU makes the embed stage dominate,
and runs each area three times, interleaved: ``model.runtime: torch`` (the path before ONNX
Runtime), ``auto`` (the default) and ``auto/bf16`` (``model.precision: bf16``), to show the
end-to-end gain in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the pipeline package

STAGES = ("search", "cube", "embed", "classify", "write")
MEMORY_LIMIT = 1.25  # peak memory at the largest area over the 1x baseline


def prepare(root: Path, side: int, scales: list[int], full_model: bool) -> dict:
    """Scenes covering the largest region, the models, and one workflow per scale."""
    import torch
    from rasterio.warp import transform_bounds

    from encoder.checkpoint import EncoderMetadata, save_checkpoint
    from fixtures.tiny import tiny_encoder, write_tiny_clip

    largest = side * math.isqrt(max(scales))
    from fixtures.synthetic import write_synthetic_collection

    synthetic = write_synthetic_collection(
        root / "scenes", origin=(500000.0, 4800000.0), shape=(largest + 8, largest + 8)
    )
    dim = 512 if full_model else 32
    clip = write_tiny_clip(root / "clip", embed_dim=dim)
    checkpoint = root / "encoder.pt"
    if full_model:
        from encoder.model import TimeSenCLIPEncoder

        torch.manual_seed(0)
        model = TimeSenCLIPEncoder()
    else:
        model = tiny_encoder(dim)
    save_checkpoint(model, checkpoint, metadata=EncoderMetadata(clip_model=f"local-dir:{clip}"))
    xmin, _, _, ymax = synthetic.bounds
    workflows = {}
    for scale in scales:
        extent = side * math.isqrt(scale) * 10.0
        # A 40 m margin inside the imagery keeps every pixel covered by data.
        box = (xmin + 40, ymax - 40 - extent, xmin + 40 + extent, ymax - 40)
        bbox = transform_bounds(f"EPSG:{synthetic.epsg}", "EPSG:4326", *box)
        workflows[scale] = {
            "name": f"bench-{scale}x",
            "year": 2023,
            "regions": [{"name": "area", "bbox": list(bbox)}],
            "stac": {
                "url": "",
                "collection": "sentinel-2-l2a",
                "allowed_paths": [str(root / "scenes")],
            },
            "cube": {"tile_size": 256, "chunk_size": 128},
            "model": {
                "checkpoint": str(checkpoint),
                "clip": {"model": f"local-dir:{clip}"},
                "device": "cpu",
            },
            "tasks": [
                {"name": "land_cover", "classes": "land_cover"},
                {"name": "habitat", "classes": "eunis_habitat"},
            ],
            "outputs": {"dir": str(root / f"out-{scale}x"), "confidence": True},
            "dask": {"n_workers": 1},
        }
    return {"collection": synthetic.collection, "items": synthetic.items, "workflows": workflows}


def run_one(workflow_path: Path) -> None:
    """Child process: run one workflow and print its summary as JSON."""
    from pipeline.run.execute import run_workflow
    from pipeline.workflow.load import load_workflow

    summary = run_workflow(load_workflow(workflow_path), progress=False)
    print(json.dumps({"pixels": summary.pixels, "seconds": dict(summary.seconds)}))


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker may exit meanwhile
            total += proc.memory_info().rss
    return total


def own_peak(proc: psutil.Process) -> int:
    """A process's own peak resident memory (VmHWM), in bytes; 0 once it is gone."""
    with contextlib.suppress(OSError, psutil.NoSuchProcess):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(workflow_path: Path) -> dict:
    """Run a workflow in a child process, sampling the peak memory of its process tree and
    the largest peak (VmHWM) of any one process in it."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "DASK_LOGGING__DISTRIBUTED": "warning",  # not every worker start and stop
    }
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(workflow_path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    process, peak, done = psutil.Process(child.pid), 0, threading.Event()
    own: dict[int, int] = {}  # pid -> its VmHWM, last read while it ran

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process))
            with contextlib.suppress(psutil.NoSuchProcess):
                for proc in [process, *process.children(recursive=True)]:
                    own[proc.pid] = max(own.get(proc.pid, 0), own_peak(proc))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    out, _ = child.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"run of {workflow_path} failed with exit code {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return {
        **result,
        "wall": wall,
        "peak_mib": peak / 2**20,
        "process_mib": max(own.values(), default=0) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128, help="side of the 1x region, pixels")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16], help="area factors")
    parser.add_argument("--full-model", action="store_true", help="published-size encoder")
    parser.add_argument(
        "--runtimes",
        nargs="+",
        help="model.runtime[/precision] per run "
        "(default: torch auto auto/bf16 with --full-model, else auto)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child)
        return
    if any(math.isqrt(s) ** 2 != s for s in args.scales):
        parser.error("scales must be square numbers (1, 4, 16, ...)")

    import torch
    import yaml

    runtimes = args.runtimes or (["torch", "auto", "auto/bf16"] if args.full_model else ["auto"])
    from fixtures.stac_server import serve_stac

    with tempfile.TemporaryDirectory(prefix="timesenclip-bench-") as tmp:
        root = Path(tmp)
        inputs = prepare(root, args.side, args.scales, args.full_model)
        rows = {}
        with serve_stac(inputs["collection"], inputs["items"], root / "stac") as url:
            for scale, workflow in inputs["workflows"].items():
                for runtime in runtimes:  # interleaved: every setting at each area in turn
                    name, _, precision = runtime.partition("/")
                    workflow["stac"]["url"] = url
                    workflow["model"].update(runtime=name, precision=precision or "fp32")
                    label = f"{scale}x-{runtime.replace('/', '-')}"
                    workflow["outputs"]["dir"] = str(root / f"out-{label}")
                    path = root / f"workflow-{label}.yaml"
                    path.write_text(yaml.safe_dump(workflow))
                    rows[scale, runtime] = measure(path)
                    wall = rows[scale, runtime]["wall"]
                    print(f"{scale}x {runtime} done in {wall:.1f} s", file=sys.stderr)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
    print(
        f"model: {'published size (random weights)' if args.full_model else 'tiny'}; "
        "2 tasks (land_cover, eunis_habitat); 24 scenes; tile 256 px, chunk 128 px"
    )
    header = ["area", "runtime", "pixels", "wall s", "px/s", *(f"{s} s" for s in STAGES)]
    header += ["embed vs first", "tree peak MiB", "vs 1x", "largest process VmHWM MiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (scale, runtime), row in rows.items():
        seconds = row["seconds"]
        base = rows[min(args.scales), runtime]
        first = rows[scale, runtimes[0]]["seconds"].get("embed", 0.0)
        cells = [
            f"{scale}x",
            runtime,
            f"{row['pixels']:,}",
            f"{row['wall']:.1f}",
            f"{row['pixels'] / row['wall']:,.0f}",
            *(f"{seconds.get(stage, 0.0):.1f}" for stage in STAGES),
            f"{first / max(seconds.get('embed', 0.0), 1e-9):.2f}x",
            f"{row['peak_mib']:,.0f}",
            f"{row['peak_mib'] / base['peak_mib']:.2f}",
            f"{row['process_mib']:,.0f}",
        ]
        print("| " + " | ".join(cells) + " |")
    for runtime in runtimes:
        mine = [row["peak_mib"] for (_, r), row in rows.items() if r == runtime]
        ratio = max(mine) / mine[0]
        verdict = "flat" if ratio <= MEMORY_LIMIT else "NOT flat"
        print(
            f"{runtime}: peak memory, largest over 1x: {ratio:.2f} "
            f"(limit {MEMORY_LIMIT}): {verdict}"
        )
    print("stage seconds are summed over worker threads; wall includes cluster start-up")


if __name__ == "__main__":
    main()
