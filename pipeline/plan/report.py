"""The dry run's report of a plan, and a rough time estimate for this machine."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.plan.scenes import ScenePlan, tile_bytes
from pipeline.workflow.schema import Workflow

if TYPE_CHECKING:  # the plan's report stays importable without torch
    from pipeline.plan.run_plan import RunPlan

# About 0.21 GFLOP per pixel for the published encoder (bench/README.md), for time estimates.
FLOP_PER_PIXEL = 0.21e9

LAYOUTS = {"cog": "one COG per layer", "tiles": "per-tile COGs under a VRT per layer"}


def describe_run(plan: RunPlan, pixels_per_second: float | None) -> str:
    """The whole plan: model, tasks, regions already complete, then ``describe``."""
    checkpoint, settings = plan.checkpoint, plan.settings
    where = "" if plan.workflow.dask.kind == "local" else " (as each worker resolves it)"
    tasks = "; ".join(
        f"{task.name} ({len(task.layers(settings.confidence))} layer(s))" for task in settings.tasks
    )
    lines = [
        f"checkpoint {checkpoint.source} (sha256 {checkpoint.sha256[:12]}, {checkpoint.dim}-d), "
        f"on {settings.device}{where}, "
        f"runtime {settings.runtime}, precision {settings.precision}",
        f"tasks: {tasks}",
        *(
            f"region {target.region.name}: complete (provenance.json matches), skipped"
            for target in plan.complete
        ),
    ]
    if plan.regions:
        lines.append(describe(plan.scenes, plan.workflow, pixels_per_second))
    else:
        lines.append("nothing to map (dry run: no pixel read)")
    return "\n".join(lines)


def describe(plan: ScenePlan, workflow: Workflow, pixels_per_second: float | None) -> str:
    """The dry run's report: per region tiles, chunk tasks, items, bytes; totals and a time."""
    lines = []
    total_px = total_chunks = 0
    total_bytes: int | None = 0
    for region in plan.regions:
        chunks = sum(plan.chunk_count(t) for t in region.tiles)
        sizes = [tile_bytes(plan, t) for t in region.tiles]
        known = None if None in sizes else sum(sizes)
        lines.append(
            f"region {region.region.name}: {len(region.tiles)} tile(s) with items "
            f"({len(region.empty)} without), {chunks:,} chunk tasks, {region.pixels:,} pixels, "
            f"{_size(known)} to read; outputs: {LAYOUTS[region.layout]}"
        )
        for tile, size in zip(region.tiles, sizes, strict=True):
            h, w = tile.tile.shape
            lines.append(
                f"  tile {tile.tile.id}  EPSG:{tile.tile.epsg}  {w}x{h} px  "
                f"{len(tile.items)} item(s)  {plan.chunk_count(tile)} chunk(s)  {_size(size)}"
            )
        total_px += region.pixels
        total_chunks += chunks
        total_bytes = None if known is None or total_bytes is None else total_bytes + known
    tasks = ", ".join(t.name for t in workflow.tasks)
    lines.append(
        f"{len(plan.regions)} region(s), {len(plan.refs):,} distinct items, {total_chunks:,} "
        f"chunk tasks, {total_px:,} pixels, {_size(total_bytes)} to read, for tasks: {tasks}"
    )
    if pixels_per_second:
        hours = total_px / pixels_per_second / 3600
        lines.append(
            f"estimated encoder time on this machine's CPU: {hours:,.1f} h at about "
            f"{pixels_per_second:,.0f} px/s (published-size model; a GPU is far faster)"
        )
    lines.append("(dry run: no pixel read)")
    return "\n".join(lines)


def cpu_pixels_per_second() -> float:
    """This machine's rough encoder throughput, from a short matrix-multiply probe."""
    import torch

    a = torch.randn(2048, 512)
    b = torch.randn(512, 2048)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(8):
        a @ b
    flops = 8 * 2 * 2048 * 512 * 2048 / (time.perf_counter() - start)
    # A transformer reaches about half of the plain matmul rate (bench/README.md).
    return 0.5 * flops / FLOP_PER_PIXEL


def _size(n: int | None) -> str:
    if n is None:
        return "unknown bytes"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"
