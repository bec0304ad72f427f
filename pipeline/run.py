"""Run a workflow: regions -> UTM tiles -> chunks on Dask -> one COG per task and UTM zone."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encoder.atomic import remove_stale_temporaries, write_text_atomic
from encoder.checkpoint import file_sha256, load_encoder, resolve_source
from encoder.device import resolve_device
from encoder.errors import TimeSenCLIPError
from encoder.prompts import TextEncoder
from pipeline.chunks import Chunk, tile_chunks
from pipeline.classify import TaskPlan, plan_task
from pipeline.cog import mosaic_to_cog, write_cog
from pipeline.harmonize import harmonization
from pipeline.process import ChunkResult, ChunkSettings, process_chunk
from pipeline.provenance import write_provenance
from pipeline.publish import describe_map, map_style
from pipeline.stac import EmptySearchError, RetryPolicy, StacSource, search_items
from pipeline.tiles import Tile, region_mask, tiles_for_region
from pipeline.workflow import Region, Workflow

log = logging.getLogger(__name__)


@dataclass
class TilePlan:
    """One tile, the STAC items that cover it and where its finished pieces go."""

    tile: Tile
    items: list[dict]
    folder: Path

    @property
    def done(self) -> bool:
        return (self.folder / "done.json").exists()


@dataclass
class RunSummary:
    """What a run did, for the closing summary and the benchmark."""

    pixels: int = 0
    tiles: int = 0
    tiles_skipped: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    outputs: list[Path] = field(default_factory=list)

    def report(self) -> str:
        """The closing summary: pixels, time per stage, outputs."""
        total = self.seconds.get("total", 0.0)
        rate = self.pixels / total if total else 0.0
        stages = ", ".join(
            f"{stage} {self.seconds[stage]:.1f} s"
            for stage in ("search", "cube", "embed", "classify", "write")
            if stage in self.seconds
        )
        lines = [
            f"mapped {self.pixels:,} pixels in {total:.1f} s ({rate:,.0f} px/s); "
            f"{self.tiles} tile(s) processed, {self.tiles_skipped} already done",
            f"time per stage (summed over workers): {stages}",
            "outputs:",
            *(f"  {path}" for path in self.outputs),
        ]
        return "\n".join(lines)


def run_workflow(
    workflow: Workflow,
    *,
    scheduler: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Produce every region's maps; finished tiles and regions are skipped on a rerun."""
    summary = RunSummary()
    started = time.perf_counter()
    plans = {region.name: plan_region(workflow, region, summary) for region in workflow.regions}
    if dry_run:
        print_plan(workflow, plans)
        return summary
    checkpoint, checkpoint_hash, dim = check_checkpoint(workflow)
    tasks = plan_tasks(workflow, dim)
    settings = ChunkSettings(
        year=workflow.year,
        resolution=workflow.cube.resolution,
        chunk_size=workflow.cube.chunk_size,
        cloud_mask=tuple(workflow.cube.cloud_mask),
        mask_mode=workflow.cube.mask_mode,
        resampling=workflow.cube.resampling,
        on_bad_asset=workflow.stac.on_bad_asset,
        checkpoint=checkpoint,
        device=str(resolve_device(workflow.model.device)),
        batch_size=workflow.model.batch_size,
        tasks=tuple(tasks),
        confidence=workflow.outputs.confidence,
    )
    fingerprint = run_fingerprint(workflow, checkpoint_hash, tasks)
    provenance = {"checkpoint": checkpoint, "checkpoint_sha256": checkpoint_hash}
    with dask_client(workflow, scheduler) as client:
        for region in workflow.regions:
            run_region(
                client,
                workflow,
                region,
                plans[region.name],
                settings,
                fingerprint,
                provenance,
                summary,
                progress,
            )
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def run_region(
    client,
    workflow: Workflow,
    region: Region,
    tiles: list[TilePlan],
    settings: ChunkSettings,
    fingerprint: str,
    provenance: dict,
    summary: RunSummary,
    progress: bool,
) -> None:
    """Map one region, or skip it when a previous run with the same fingerprint completed it."""
    region_dir = workflow.outputs.dir / region.name
    if region_is_complete(region_dir, fingerprint):
        log.info("region %s is complete: skipped", region.name)
        summary.tiles_skipped += len(tiles)
        return
    if region_dir.exists():
        for path in remove_stale_temporaries(region_dir):
            log.info("removed %s, left by an interrupted run", path)
    scratch = region_dir / ".tiles"
    for plan in tiles:
        plan.folder = scratch / fingerprint[:16] / plan.tile.id
    if workflow.outputs.embeddings:
        from pipeline.embeddings import create_stores

        dim = settings.tasks[0].weights.shape[1]
        store = create_stores(region_dir, [p.tile for p in tiles], workflow, dim)
        settings = dataclasses.replace(settings, embeddings_store=store)
        summary.outputs.append(store)
    run_tiles(client, tiles, region, settings, summary, progress)
    start = time.perf_counter()
    summary.outputs += finish_region(workflow, tiles, settings.tasks, region_dir)
    summary.outputs.append(
        write_region_metadata(workflow, tiles, settings.tasks, fingerprint, provenance, region_dir)
    )
    # The region is complete (provenance.json says so): its tile pieces are no longer needed.
    shutil.rmtree(scratch, ignore_errors=True)
    summary.seconds["write"] += time.perf_counter() - start


def plan_region(workflow: Workflow, region: Region, summary: RunSummary) -> list[TilePlan]:
    """Tiles of a region and the items found for each (one STAC search per tile).

    Tiles without any item (open sea, say) are left out and stay nodata; a region where no tile
    has an item is an error.
    """
    start = time.perf_counter()
    stac = workflow.stac
    source = StacSource(
        url=stac.url,
        file=stac.file,
        collection=stac.collection,
        max_cloud_cover=stac.max_cloud_cover,
        provider=stac.provider,
        retry=RetryPolicy(attempts=stac.retries + 1),
    )
    plans, empty = [], []
    for tile in tiles_for_region(region.area, workflow.cube.tile_size, workflow.cube.resolution):
        try:
            items = search_items(source, tile.lonlat_bounds, workflow.year)
        except EmptySearchError as err:
            log.warning("tile %s: no items, left as nodata", tile.id)
            empty.append(err)
            continue
        plans.append(TilePlan(tile, [item.to_dict() for item in items], Path()))
    summary.seconds["search"] += time.perf_counter() - start
    if not plans:
        raise EmptySearchError(f"region {region.name!r}: no tile has any item. {empty[0]}")
    return plans


def print_plan(workflow: Workflow, plans: dict[str, list[TilePlan]]) -> None:
    """The dry run's report: tiles, items and pixels per region, nothing read."""
    total = 0
    for region, tiles in plans.items():
        pixels = sum(p.tile.shape[0] * p.tile.shape[1] for p in tiles)
        total += pixels
        print(f"region {region}: {len(tiles)} tile(s), {pixels:,} pixels")
        for p in tiles:
            h, w = p.tile.shape
            print(f"  tile {p.tile.id}  EPSG:{p.tile.epsg}  {w}x{h} px  {len(p.items)} item(s)")
    tasks = ", ".join(t.name for t in workflow.tasks)
    print(
        f"{len(plans)} region(s), {total:,} pixels to map for tasks: {tasks} "
        "(dry run: nothing read)"
    )


def check_checkpoint(workflow: Workflow) -> tuple[str, str, int]:
    """Resolve and load the checkpoint once up front, so a bad one fails before any work.

    Returns what workers load (a hub source stays a hub source: each worker, possibly on another
    machine, fetches it into its own cache), the file's sha256 and the embedding width.
    """
    source = workflow.model.checkpoint
    path = resolve_source(source)
    model = load_encoder(path)
    worker_source = source if source.startswith("hf-hub:") else str(path)
    return worker_source, file_sha256(path), model.config.dim


def plan_tasks(workflow: Workflow, dim: int) -> list[TaskPlan]:
    """Prompt embeddings of every task, computed once here and shipped to the workers."""
    text = TextEncoder(
        model=workflow.model.clip.model,
        pretrained=workflow.model.clip.pretrained,
        device=str(resolve_device(workflow.model.device)),
    )
    tasks = []
    for task in workflow.tasks:
        plan = plan_task(task.name, task.class_specs(), task.templates, text, top_k=task.top_k)
        if plan.weights.shape[1] != dim:
            raise TimeSenCLIPError(
                f"the CLIP text model {workflow.model.clip.model!r} gives "
                f"{plan.weights.shape[1]}-d "
                f"embeddings but the encoder checkpoint gives {dim}-d ones: use the CLIP model the "
                "encoder was trained against (ViT-B-32 / openai for the published weights)."
            )
        tasks.append(plan)
    return tasks


def run_fingerprint(workflow: Workflow, checkpoint_hash: str, tasks: list[TaskPlan]) -> str:
    """A hash of everything that changes pixels: finished work is reused only when it matches."""
    digest = hashlib.sha256()
    digest.update(checkpoint_hash.encode())
    digest.update(json.dumps(workflow.cube.model_dump(mode="json"), sort_keys=True).encode())
    outputs = workflow.outputs.model_dump(mode="json", exclude={"dir"})
    digest.update(json.dumps([workflow.year, outputs], sort_keys=True).encode())
    for task in tasks:
        digest.update(task.name.encode())
        digest.update(np.ascontiguousarray(task.weights).tobytes())
    return digest.hexdigest()


def region_is_complete(region_dir: Path, fingerprint: str) -> bool:
    provenance = region_dir / "provenance.json"
    if not provenance.exists():
        return False
    return json.loads(provenance.read_text()).get("fingerprint") == fingerprint


@contextlib.contextmanager
def dask_client(workflow: Workflow, scheduler: str | None) -> Iterator:
    """Connect to the given scheduler, or start a LocalCluster sized to this machine."""
    from distributed import Client, LocalCluster

    address = scheduler or workflow.dask.scheduler
    if address:
        with Client(address) as client:
            yield client
        return
    cores = os.cpu_count() or 1
    n_workers = workflow.dask.n_workers or max(1, cores // 4)
    threads = workflow.dask.threads_per_worker or max(1, cores // n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def chunk_mask(region: Region, chunk: Chunk) -> np.ndarray | None:
    """Pixels of a chunk inside the region and its UTM zone; None when all of them are."""
    window = dataclasses.replace(chunk.tile, bounds=chunk.bounds, shape=(chunk.height, chunk.width))
    inside = region_mask(region.area, window)
    return None if inside.all() else inside


class TileCanvas:
    """A tile's rasters, filled chunk by chunk and written once every chunk has arrived."""

    def __init__(self, plan: TilePlan, layers: dict[str, int | None]) -> None:
        self.plan = plan
        self.remaining = 0
        self.nodata = layers
        self.layers = {
            name: np.full(plan.tile.shape, nodata or 0, np.uint8) for name, nodata in layers.items()
        }

    def add(self, result: ChunkResult) -> None:
        c = result.chunk
        window = (slice(c.row, c.row + c.height), slice(c.col, c.col + c.width))
        for name, values in result.layers.items():
            self.layers[name][window] = values
        self.remaining -= 1

    def write(self) -> None:
        tile, folder = self.plan.tile, self.plan.folder
        for name, array in self.layers.items():
            write_cog(
                folder / f"{name}.tif",
                array,
                transform=tile.transform,
                crs=f"EPSG:{tile.epsg}",
                nodata=self.nodata[name],
            )
        # Written last: a tile counts as finished only once all its files are in place.
        write_text_atomic(folder / "done.json", json.dumps({"tile": tile.id}))


def run_tiles(
    client,
    tiles: list[TilePlan],
    region: Region,
    settings: ChunkSettings,
    summary: RunSummary,
    progress: bool,
) -> None:
    """Process every unfinished tile's chunks on the cluster, a bounded number at a time."""
    from distributed import as_completed
    from tqdm import tqdm

    todo = [p for p in tiles if not p.done]
    summary.tiles += len(todo)
    summary.tiles_skipped += len(tiles) - len(todo)
    if not todo:
        return
    settings_future = client.scatter(settings, broadcast=True)
    canvases: dict[str, TileCanvas] = {}
    jobs = []
    for plan in todo:
        canvas = TileCanvas(plan, settings.layers())
        items_future = client.scatter(plan.items)
        for chunk in tile_chunks(plan.tile, settings.chunk_size):
            jobs.append((chunk, items_future))
            canvas.remaining += 1
        canvases[plan.tile.id] = canvas
    in_flight = max(2, 2 * sum(client.nthreads().values()))
    pending = iter(jobs)
    queue = as_completed()

    def submit_next() -> None:
        job = next(pending, None)
        if job is not None:
            chunk, items_future = job
            queue.add(
                client.submit(
                    process_chunk,
                    chunk,
                    items_future,
                    settings_future,
                    chunk_mask(region, chunk),
                    pure=False,
                )
            )

    for _ in range(in_flight):
        submit_next()
    with (
        tqdm(
            total=len(todo), desc=f"{region.name} tiles", unit="tile", disable=not progress
        ) as tbar,
        tqdm(
            total=len(jobs), desc=f"{region.name} chunks", unit="chunk", disable=not progress
        ) as cbar,
    ):
        for future in queue:
            result: ChunkResult = future.result()
            submit_next()
            for stage, seconds in result.seconds.items():
                summary.seconds[stage] += seconds
            summary.pixels += result.chunk.pixels
            canvas = canvases[result.chunk.tile.id]
            canvas.add(result)
            cbar.update()
            if canvas.remaining == 0:
                start = time.perf_counter()
                canvas.write()
                summary.seconds["write"] += time.perf_counter() - start
                del canvases[result.chunk.tile.id]
                tbar.update()


def finish_region(
    workflow: Workflow, tiles: list[TilePlan], tasks: tuple[TaskPlan, ...], region_dir: Path
) -> list[Path]:
    """Join the region's finished tiles into one COG per task and UTM zone, with style and Item."""
    zones = sorted({p.tile.epsg for p in tiles})
    outputs = []
    for epsg in zones:
        folders = [p.folder for p in tiles if p.tile.epsg == epsg]
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"

        def mosaic(name: str, folders=folders, suffix=suffix, **style) -> Path:
            path = region_dir / f"{name}{suffix}.tif"
            tiles = [folder / f"{name}.tif" for folder in folders]
            mosaic_to_cog(tiles, path, blocksize=workflow.outputs.blocksize, **style)
            return path

        valid = mosaic("valid_months", overview_resampling="nearest")
        outputs.append(valid)
        for task in tasks:
            confidence = None
            if workflow.outputs.confidence:
                confidence = mosaic(f"{task.name}_confidence", overview_resampling="average")
                outputs.append(confidence)
            path = mosaic(
                task.name,
                overview_resampling=workflow.outputs.overview_resampling,
                **map_style(task),
            )
            outputs.append(path)
            outputs += describe_map(
                path, task, year=workflow.year, confidence_path=confidence, valid_months_path=valid
            )
    return outputs


def write_region_metadata(
    workflow: Workflow,
    tiles: list[TilePlan],
    tasks: tuple[TaskPlan, ...],
    fingerprint: str,
    provenance: dict,
    region_dir: Path,
) -> Path:
    """``provenance.json``, written last: its presence marks the region as complete."""
    items = {item["id"]: item for plan in tiles for item in plan.items}
    record = {
        "fingerprint": fingerprint,
        "workflow": workflow.model_dump(mode="json"),
        **provenance,
        "tasks": [
            {
                "name": task.name,
                "classes": [c.name for c in task.classes],
                "colors": list(task.colors),
                "prompts": [list(p) for p in task.prompts],
            }
            for task in tasks
        ],
        "stac_items": sorted(items),
        "harmonization": [
            dataclasses.asdict(harmonization(item)) for _, item in sorted(items.items())
        ],
        "tiles": [
            {"id": p.tile.id, "epsg": p.tile.epsg, "bounds": list(p.tile.bounds)} for p in tiles
        ],
    }
    return write_provenance(region_dir / "provenance.json", record)
