"""Maps from a kept store against a fresh run: pixels per second of `query` and `classify`.

The demo's synthetic region (4 tiles, 156 x 156 px) is mapped by ``run_workflow`` with
``outputs.embeddings`` float16 and int8 (a fresh output folder each time: the baseline), then
``query_store`` (1 and 4 texts) and ``classify_store`` (land_cover) map it again from each store.
Runs and queries alternate, ``--repeats`` times; the table holds medians of wall-clock times, each
including its own set-up (cluster start for a run, opening the store for a query). Text embeddings
are cached on disk after their first use, so one untimed query and classification fill that cache
first. Queries pass no pixel through the encoder, whatever its size.

    python bench/query.py [--repeats 3] [--side 160] [--full-model]

The encoder is the demo's tiny random one by default; ``--full-model`` uses the published
architecture (random weights, 512-d), which makes the run's embed stage cost what it does for real.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file, bench/ comes first on sys.path and this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the pipeline package

from bench.machine import machine

ENCODINGS = ("float16", "int8")
TEXTS = ["dense forest", "open water", "greenhouses", "flooded rice paddies"]


def full_size_model(root: Path, workflow: dict) -> None:
    """Swap the demo's tiny models for a published-size encoder and a 512-d tiny CLIP."""
    import torch

    from encoder.checkpoint import EncoderMetadata, save_checkpoint
    from encoder.model import TimeSenCLIPEncoder
    from fixtures.tiny import write_tiny_clip

    clip = f"local-dir:{write_tiny_clip(root / 'clip-512', embed_dim=512)}"
    torch.manual_seed(0)
    checkpoint = root / "encoder-512.pt"
    save_checkpoint(TimeSenCLIPEncoder(), checkpoint, metadata=EncoderMetadata(clip_model=clip))
    workflow["model"] = {
        **workflow["model"],
        "checkpoint": str(checkpoint),
        "clip": {"model": clip},
    }


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=160, help="side of the synthetic scenes, px")
    parser.add_argument("--full-model", action="store_true", help="published-size encoder")
    args = parser.parse_args()

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    import torch
    import yaml

    from fixtures.demo import write_demo_inputs
    from fixtures.stac_server import serve_stac
    from pipeline.run.execute import run_workflow
    from pipeline.store.embeddings import open_store
    from pipeline.store.query import query_store
    from pipeline.store.reclassify import classify_store
    from pipeline.workflow.load import load_workflow

    seconds: dict[tuple[str, str], list[float]] = {}
    sizes: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="timesenclip-bench-query-") as tmp:
        root = Path(tmp)
        workflow, synthetic = write_demo_inputs(root, shape=(args.side, args.side))
        if args.full_model:
            full_size_model(root, workflow)
        with serve_stac(synthetic.collection, synthetic.items, root / "data" / "stac") as url:
            workflow["stac"]["url"] = url
            for repeat in range(args.repeats):
                for encoding in ENCODINGS:
                    out = root / f"run-{repeat}-{encoding}"
                    outputs = {**workflow["outputs"], "dir": str(out), "embeddings": encoding}
                    path = root / f"workflow-{repeat}-{encoding}.yaml"
                    path.write_text(yaml.safe_dump({**workflow, "outputs": outputs}))
                    wall, _ = timed(run_workflow, load_workflow(path), progress=False)
                    seconds.setdefault(("run", encoding), []).append(wall)
                    store = out / workflow["regions"][0]["name"] / "embeddings.zarr"
                    if repeat == 0 and encoding == ENCODINGS[0]:  # fill the text cache
                        query_store(store, TEXTS, out_dir=out / "warm")
                        classify_store(store, classes="land_cover", out_dir=out / "warm")
                    for label, texts in (("query, 1 text", TEXTS[:1]), ("query, 4 texts", TEXTS)):
                        wall, _ = timed(query_store, store, texts, out_dir=out / "q")
                        seconds.setdefault((label, encoding), []).append(wall)
                    wall, _ = timed(classify_store, store, classes="land_cover", out_dir=out / "c")
                    seconds.setdefault(("classify land_cover", encoding), []).append(wall)
                    kept = open_store(store)
                    pixels = sum(z.height * z.width for z in kept.zones)
                    files = [p for p in store.rglob("*") if p.is_file()]
                    raw = kept.dim * kept.zones[0].array.dtype.itemsize
                    sizes[encoding] = raw, sum(p.stat().st_size for p in files) / pixels
                    print(f"repeat {repeat + 1} {encoding} done", file=sys.stderr)

    model = "published size, random weights, 512-d" if args.full_model else "tiny (demo), 32-d"
    print(f"machine: {machine()}; python {platform.python_version()}, torch {torch.__version__}")
    print(
        f"region: {pixels:,} px (the demo's 4 tiles); encoder: {model}, CPU; run has 2 tasks; "
        f"medians of {args.repeats} alternating repeats"
    )
    print("| px/s | " + " | ".join(f"{e} store" for e in ENCODINGS) + " |")
    print("|---|" + "---|" * len(ENCODINGS))
    jobs = list(dict.fromkeys(job for job, _ in seconds))
    for job in jobs:
        cells = [f"{pixels / statistics.median(seconds[job, e]):,.0f}" for e in ENCODINGS]
        label = "fresh run (baseline)" if job == "run" else job
        print(f"| {label} | " + " | ".join(cells) + " |")
    for job in jobs[1:]:
        cells = [
            f"{statistics.median(seconds['run', e]) / statistics.median(seconds[job, e]):.1f}x"
            for e in ENCODINGS
        ]
        print(f"| {job}: speed-up over the run | " + " | ".join(cells) + " |")
    cells = [f"{sizes[e][0]:,.0f} / {sizes[e][1]:,.0f}" for e in ENCODINGS]
    print("| store bytes per pixel, raw / on disk | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
