"""Execute a run's plan on Dask: every unfinished region's tiles as chunk and tile tasks, then
its maps and metadata. The plan (``pipeline.plan``) has made every decision before this starts."""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cube.composite import month_blocks
from pipeline.maps.outputs import PROVENANCE
from pipeline.maps.stac_items import note_skips
from pipeline.plan.report import cpu_pixels_per_second, describe_run
from pipeline.plan.run_plan import RunPlan, plan_run
from pipeline.plan.scenes import RegionPlan
from pipeline.plan.settings import ChunkSettings
from pipeline.run.cluster import EarlyCluster, RunCluster, describe_cluster
from pipeline.run.composite_tasks import BlockReport, composite_tile, composites_area
from pipeline.run.finish import finish_mosaics, finish_tiled, write_region_metadata
from pipeline.run.lock import output_lock
from pipeline.run.progress import ProgressWatch, RegionProgress, finished
from pipeline.run.worker_tasks import ChunkReport, TileReport, finish_tile, process_chunk
from pipeline.workflow.schema import Workflow
from timesenclip.common.atomic import remove_stale_temporaries

log = logging.getLogger(__name__)
STAGES = ("search", "cube", "embed", "classify", "write")


@dataclass
class RunSummary:
    """What a run did, for the closing summary and the benchmark."""

    pixels: int = 0
    tiles: int = 0
    tiles_skipped: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    outputs: list[Path] = field(default_factory=list)
    skipped_assets: int = 0  # asset reads left out (on_bad_asset: skip), over all tiles
    transient_skips: int = 0  # of those, failures a rerun retries
    tiles_to_retry: int = 0

    def report(self) -> str:
        """The closing summary: pixels, time per stage, skips, outputs."""
        total = self.seconds.get("total", 0.0)
        rate = self.pixels / total if total else 0.0
        stages = ", ".join(f"{s} {self.seconds[s]:.1f} s" for s in STAGES if s in self.seconds)
        lines = [
            f"mapped {self.pixels:,} pixels in {total:.1f} s ({rate:,.0f} px/s); "
            f"{self.tiles} tile(s) processed, {self.tiles_skipped} already done",
            f"time per stage (summed over workers): {stages}",
        ]
        if self.skipped_assets:
            lines.append(
                f"{self.skipped_assets} scene(s) left out of chunks for unreadable assets "
                f"(provenance.json lists them), {self.transient_skips} for failures that may "
                f"pass: run the same command again to redo those {self.tiles_to_retry} tile(s)"
                if self.transient_skips
                else f"{self.skipped_assets} scene(s) left out of chunks for unreadable assets "
                "(provenance.json lists them)"
            )
        lines += [
            "outputs:",
            *(f"  {path}" for path in dict.fromkeys(self.outputs)),
        ]
        return "\n".join(lines)


def run_workflow(
    workflow: Workflow,
    *,
    dry_run: bool = False,
    progress: bool = True,
    report: Path | None = None,
    early: EarlyCluster | None = None,
) -> RunSummary:
    """Produce every region's maps on the cluster of ``workflow.dask``; finished tiles and
    regions are skipped on a rerun. ``report`` keeps Dask's performance report (HTML).

    The plan (``pipeline.plan.run_plan``) is made first, so anything wrong with the user's input
    (checkpoint, prompts, STAC searches) fails before a batch or remote cluster is reached; a
    local one starts meanwhile (``EarlyCluster``: ``early``, one the caller started before its
    imports, else one made here). ``dry_run`` prints the plan, and the job script a Slurm or
    PBS cluster would submit, and stops there.
    """
    summary = RunSummary()
    started = time.perf_counter()
    if dry_run:
        print(describe_run(plan_run(workflow), cpu_pixels_per_second()))
        print(describe_cluster(workflow))
        return summary
    with output_lock(workflow.outputs.dir), contextlib.ExitStack() as stack:  # one run a folder
        start = early or stack.enter_context(EarlyCluster(workflow))
        plan = plan_run(workflow)
        summary.seconds["search"] += plan.scenes.seconds
        for target in plan.complete:
            log.info("region %s is complete: skipped", target.region.name)
            # A kill during the last clean-up leaves these behind.
            shutil.rmtree(target.folder / ".tiles", ignore_errors=True)
            remove_stale_temporaries(target.folder)
            summary.tiles_skipped += len(workflow.tiles(target.region))
        if plan.regions:
            cluster = start.cluster(plan.settings.device, report)
            for region in plan.regions:
                run_region(cluster, plan, region, summary, progress)
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def run_region(
    cluster: RunCluster, plan: RunPlan, region: RegionPlan, summary: RunSummary, progress: bool
) -> None:
    """Map one region: its unfinished tiles on the cluster, then its maps and metadata."""
    workflow = plan.workflow
    if region.folder.exists():
        # From here on the outputs change: an older provenance.json must not vouch for them.
        (region.folder / PROVENANCE).unlink(missing_ok=True)
        for path in remove_stale_temporaries(region.folder):
            log.info("removed %s, left by an interrupted run", path)
    settings = plan.chunk_settings(region)
    if settings.embeddings_store:
        from pipeline.store.embeddings import create_stores

        create_stores(  # the store records the checkpoint it came from
            region.folder,
            [p.tile for p in region.tiles],
            workflow,
            plan.checkpoint.dim,
            checkpoint_sha256=plan.checkpoint.sha256,
        )
        summary.outputs.append(settings.embeddings_store)
    reports = run_tiles(cluster, plan, region, settings, summary, progress)
    start = time.perf_counter()
    finish = finish_tiled if region.layout == "tiles" else finish_mosaics
    outputs = finish(cluster, workflow, region, settings.tasks)
    skipped = [s for r in reports.values() for s in r.skipped]
    note_skips(outputs, skipped)
    retry = [tile for tile, r in reports.items() if r.to_retry]
    summary.skipped_assets += len(skipped)
    summary.transient_skips += sum(bool(s.get("transient")) for s in skipped)
    summary.tiles_to_retry += len(retry)
    summary.outputs += outputs
    if settings.embeddings_store:  # provenance vouches for the store too
        outputs.append(settings.embeddings_store)
    summary.outputs.append(write_region_metadata(plan, region, reports, outputs))
    if retry:
        log.warning(
            "region %s: tile(s) %s left scenes out for failures that may pass: run the same "
            "command again to redo them",
            region.region.name,
            ", ".join(retry),
        )
    else:
        # The region is complete (provenance.json says so): its tile pieces are no longer needed.
        shutil.rmtree(region.folder / ".tiles", ignore_errors=True)
    summary.seconds["write"] += time.perf_counter() - start


def run_tiles(
    cluster: RunCluster,
    plan: RunPlan,
    region: RegionPlan,
    settings: ChunkSettings,
    summary: RunSummary,
    progress: bool,
) -> dict[str, TileReport]:
    """Run every unfinished tile's block, chunk and tile tasks, a bounded number at a time.

    Settings go to the scheduler once, as a task it can recompute; a tile's chunk tasks depend
    on its blocks of months (``pipeline.cube.area``), its tile task on its chunk tasks, so the
    scheduler reruns whatever a lost worker held. The client only counts progress: it holds no
    pixels. A batch cluster is given work for all the threads it may grow to, which is what
    makes it request more jobs.
    """
    from distributed import as_completed

    client = cluster.client
    reports = {p.tile.id: TileReport.read(p.folder) for p in region.tiles if p.done}
    todo = [p for p in region.tiles if not p.done]
    summary.tiles += len(todo)
    summary.tiles_skipped += len(region.tiles) - len(todo)
    if not todo:
        return reports
    shared = None  # the settings, submitted after the first blocks of months (submit_tile)
    pending = iter(todo)
    tile_of: dict[str, str] = {}  # future key -> tile id, for the futures of tile tasks
    in_flight: dict[str, list] = {}  # tile id -> its futures, kept until the tile is done
    queue = as_completed(with_results=True, raise_errors=False)
    chunks_running = 0
    turn = itertools.count()

    def submit_tile() -> bool:
        nonlocal chunks_running, shared
        tile = next(pending, None)
        if tile is None:
            return False
        tasks = list(plan.scenes.chunk_tasks(tile, region.region))
        area = composites_area(tasks)
        refs = [plan.scenes.refs[i] for i in tile.items]
        # A tile's blocks of months are written to the scratch space of one machine: its
        # chunks and the tile task that removes them go there too (elsewhere if it is lost; a
        # chunk away from its blocks composites itself). The machines take the tiles in turn.
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        hosts = sorted({info["host"] for info in workers})
        where = {"pure": False}
        if hosts:
            where.update(workers=[hosts[next(turn) % len(hosts)]], allow_other_workers=True)
        blocks = [
            client.submit(
                composite_tile, tile, refs, area, index, settings.cube, settings.gdal, **where
            )
            for index in range(len(month_blocks(settings.cube)) if area else 0)
        ]
        if shared is None:
            # The settings' plans need torch to unpickle, and a worker unpickles what it is sent
            # on its event loop: sent after the first blocks of months, those start while a
            # fresh worker still imports torch (``pipeline.run.worker_start``).
            shared = client.submit(_identity, settings, pure=False)
        futures = [client.submit(process_chunk, task, shared, *blocks, **where) for task in tasks]
        done = client.submit(finish_tile, tile, shared, *futures, *blocks, **where)
        tile_of[done.key] = tile.tile.id
        in_flight[tile.tile.id] = [*blocks, *futures, done]
        chunks_running += len(futures)
        queue.update([*blocks, *futures, done])
        return True

    def fill() -> None:
        slots = max(2, 2 * max(sum(client.nthreads().values()), cluster.max_threads))
        while (chunks_running < slots or not in_flight) and submit_tile():
            pass

    name = region.region.name
    watch = ProgressWatch.of(cluster, plan.workflow)
    chunk_total = sum(plan.scenes.chunk_count(p) for p in todo)
    with RegionProgress(name, len(todo), chunk_total, enabled=progress) as bars:
        fill()
        for future, result in finished(queue, watch, name):
            if isinstance(result, BlockReport):
                summary.seconds["cube"] += result.seconds
            elif isinstance(result, ChunkReport):
                chunks_running -= 1
                summary.pixels += result.pixels
                for stage, seconds in result.seconds.items():
                    summary.seconds[stage] += seconds
                bars.update("chunks")
            else:
                reports[result.tile_id] = result
                summary.seconds["write"] += result.seconds.get("write", 0.0)
                del in_flight[tile_of.pop(future.key)]  # releases its chunk results too
                bars.update("tiles")
            fill()
    return reports


def _identity(value):
    return value
