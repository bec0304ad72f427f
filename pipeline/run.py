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
from pipeline.chunks import tile_chunks
from pipeline.classify import Plan, plan_workflow_task  # [issue 11]
from pipeline.cog import mosaic_to_cog, write_cog
from pipeline.harmonize import harmonization
from pipeline.process import ChunkResult, ChunkSettings, process_chunk
from pipeline.provenance import write_provenance
from pipeline.publish import publish_plan  # [issue 11]
from pipeline.stac import EmptySearchError, RetryPolicy, StacSource, search_items
from pipeline.tiles import Tile, region_mask, zone_groups
from pipeline.workflow import Region, Workflow

log = logging.getLogger(__name__)
STAGES = ("search", "cube", "embed", "classify", "write")


@dataclass
class TilePlan:
    """One tile, the STAC items that cover it and the folder its finished pieces go to."""

    tile: Tile
    items: list[dict]
    folder: Path

    @property
    def done(self) -> bool:
        return (self.folder / "done.json").exists()


@dataclass
class RegionJob:
    """A region still to map: its tiles and the fingerprints its finished work is checked by."""

    region: Region
    folder: Path
    tiles: list[TilePlan]
    fingerprint: str


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
        stages = ", ".join(f"{s} {self.seconds[s]:.1f} s" for s in STAGES if s in self.seconds)
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
    """Produce every region's maps; finished tiles and regions are skipped on a rerun.

    Everything that can fail on user input (checkpoint, prompts, STAC searches) happens before
    the cluster starts; regions completed by an earlier run are neither searched nor started on.
    """
    summary = RunSummary()
    started = time.perf_counter()
    if dry_run:
        print_plan(workflow, {r.name: plan_region(workflow, r, summary) for r in workflow.regions})
        return summary
    source, checkpoint_hash, dim = check_checkpoint(workflow)
    tasks = plan_tasks(workflow, dim)
    settings = ChunkSettings(
        year=workflow.year,
        resolution=workflow.cube.resolution,
        chunk_size=workflow.cube.chunk_size,
        cloud_mask=tuple(workflow.cube.cloud_mask),
        mask_mode=workflow.cube.mask_mode,
        resampling=workflow.cube.resampling,
        on_bad_asset=workflow.stac.on_bad_asset,
        checkpoint=source,
        device=str(resolve_device(workflow.model.device)),
        batch_size=workflow.model.batch_size,
        tasks=tuple(tasks),
        confidence=workflow.outputs.confidence,
    )
    jobs = []
    for region in workflow.regions:
        folder = workflow.outputs.dir / region.name
        tiles_key = tile_fingerprint(workflow, region, checkpoint_hash, tasks, settings.device)
        fingerprint = region_fingerprint(workflow, tiles_key, tasks)
        if region_is_complete(folder, fingerprint):
            log.info("region %s is complete: skipped", region.name)
            summary.tiles_skipped += len(workflow.tiles(region))
            continue
        scratch = folder / ".tiles" / tiles_key[:16]
        jobs.append(
            RegionJob(region, folder, plan_region(workflow, region, summary, scratch), fingerprint)
        )
    provenance = {"checkpoint": source, "checkpoint_sha256": checkpoint_hash}
    if jobs:
        with dask_client(workflow, scheduler, settings.device) as client:
            for job in jobs:
                run_region(client, workflow, job, settings, provenance, summary, progress)
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def run_region(
    client,
    workflow: Workflow,
    job: RegionJob,
    settings: ChunkSettings,
    provenance: dict,
    summary: RunSummary,
    progress: bool,
) -> None:
    """Map one region: its unfinished tiles on the cluster, then its mosaics and metadata."""
    if job.folder.exists():
        # From here on the outputs change: an older provenance.json must not vouch for them.
        (job.folder / "provenance.json").unlink(missing_ok=True)
        for path in remove_stale_temporaries(job.folder):
            log.info("removed %s, left by an interrupted run", path)
    if workflow.outputs.embeddings:
        from pipeline.embeddings import create_stores

        dim = settings.tasks[0].weights.shape[1]
        store = create_stores(  # [issue 11] the store records the checkpoint it came from
            job.folder,
            [p.tile for p in job.tiles],
            workflow,
            dim,
            checkpoint_sha256=provenance["checkpoint_sha256"],
        )
        settings = dataclasses.replace(settings, embeddings_store=store)
        summary.outputs.append(store)
    run_tiles(client, job, settings, summary, progress)
    start = time.perf_counter()
    summary.outputs += finish_region(workflow, job.tiles, settings.tasks, job.folder)
    summary.outputs.append(write_region_metadata(workflow, job, settings.tasks, provenance))
    # The region is complete (provenance.json says so): its tile pieces are no longer needed.
    shutil.rmtree(job.folder / ".tiles", ignore_errors=True)
    summary.seconds["write"] += time.perf_counter() - start


def plan_region(
    workflow: Workflow, region: Region, summary: RunSummary, scratch: Path = Path()
) -> list[TilePlan]:
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
    for tile in workflow.tiles(region):
        try:
            items = search_items(source, tile.lonlat_bounds, workflow.year)
        except EmptySearchError as err:
            log.warning("tile %s: no items, left as nodata", tile.id)
            empty.append(err)
            continue
        plans.append(TilePlan(tile, [item.to_dict() for item in items], scratch / tile.id))
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


def plan_tasks(workflow: Workflow, dim: int) -> list[Plan]:
    """Prompt embeddings of every task, computed once here and shipped to the workers."""
    text = TextEncoder(
        model=workflow.model.clip.model,
        pretrained=workflow.model.clip.pretrained,
        device=str(resolve_device(workflow.model.device)),
    )
    tasks = []
    for task in workflow.tasks:
        plan = plan_workflow_task(task, text)  # [issue 11] classes or similarity, by task.mode
        if plan.weights.shape[1] != dim:
            raise TimeSenCLIPError(
                f"the CLIP text model {workflow.model.clip.model!r} gives "
                f"{plan.weights.shape[1]}-d "
                f"embeddings but the encoder checkpoint gives {dim}-d ones: use the CLIP model the "
                "encoder was trained against (ViT-B-32 / openai for the published weights)."
            )
        tasks.append(plan)
    return tasks


def _digest(*parts: object, arrays: tuple[np.ndarray, ...] = ()) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def tile_fingerprint(
    workflow: Workflow, region: Region, checkpoint_hash: str, tasks: list[Plan], device: str
) -> str:
    """A hash of everything that changes a tile's pixels; it names the folder of tile pieces.

    Device type is in it because a GPU runs bf16 and a CPU float32; embeddings are because a
    tile finished without them left nothing in the store.
    """
    return _digest(
        checkpoint_hash,
        workflow.year,
        workflow.cube.model_dump(mode="json"),
        workflow.stac.model_dump(mode="json"),
        region.area,
        device.split(":")[0],
        workflow.outputs.confidence,
        workflow.outputs.embeddings,
        [task.name for task in tasks],
        arrays=tuple(task.weights for task in tasks),
    )


def region_fingerprint(workflow: Workflow, tiles_key: str, tasks: list[Plan]) -> str:
    """The tiles' fingerprint plus what only changes the final files (styles, COG layout)."""
    outputs = workflow.outputs.model_dump(mode="json", exclude={"dir"})
    legends = [task.record() for task in tasks]  # [issue 11] names, classes, colours, texts
    return _digest(tiles_key, outputs, legends)


def region_is_complete(region_dir: Path, fingerprint: str) -> bool:
    provenance = region_dir / "provenance.json"
    if not provenance.exists():
        return False
    return json.loads(provenance.read_text()).get("fingerprint") == fingerprint


@contextlib.contextmanager
def dask_client(workflow: Workflow, scheduler: str | None, device: str) -> Iterator:
    """Connect to the given scheduler, or start a LocalCluster sized to this machine.

    On a GPU machine, one worker process per GPU: each holds the model once and the GPU is not
    shared by several processes' batches; the worker's threads still read cubes in parallel.
    """
    from distributed import Client, LocalCluster

    address = scheduler or workflow.dask.scheduler
    if address:
        try:
            client = Client(address)  # waits distributed.comm.timeouts.connect (30 s)
        except OSError as err:
            raise TimeSenCLIPError(
                f"cannot reach the Dask scheduler at {address} ({err}): check dask.scheduler in "
                "the workflow or --scheduler, and that the scheduler is running."
            ) from None
        with client:
            yield client
        return
    cores = os.cpu_count() or 1
    if workflow.dask.n_workers:
        n_workers = workflow.dask.n_workers
    elif device.startswith("cuda"):
        import torch

        n_workers = torch.cuda.device_count()
    else:
        n_workers = max(1, cores // 4)
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


class TileCanvas:
    """A tile's rasters, filled chunk by chunk and written once every chunk has arrived."""

    def __init__(self, plan: TilePlan, layers: dict[str, int | None], chunks: int) -> None:
        self.plan = plan
        self.remaining = chunks
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
                overviews=False,  # the mosaic reads full resolution only and builds its own
            )
        # Written last: a tile counts as finished only once all its files are in place.
        write_text_atomic(folder / "done.json", json.dumps({"tile": tile.id}))


def tile_jobs(client, job: RegionJob, todo: list[TilePlan], chunk_size: int) -> Iterator[tuple]:
    """``(plan, chunk, items, inside)`` per chunk, tile by tile, made as they are submitted.

    The region mask is rasterised once per tile and sliced per chunk; items are sent to the
    cluster once per tile.
    """
    for plan in todo:
        items = client.scatter(plan.items)
        inside = region_mask(job.region.area, plan.tile)
        for chunk in tile_chunks(plan.tile, chunk_size):
            window = inside[
                chunk.row : chunk.row + chunk.height, chunk.col : chunk.col + chunk.width
            ]
            yield plan, chunk, items, None if window.all() else window


def run_tiles(
    client, job: RegionJob, settings: ChunkSettings, summary: RunSummary, progress: bool
) -> None:
    """Process every unfinished tile's chunks on the cluster, a bounded number at a time.

    A tile's canvas exists only from its first result to its last, so the client holds a few
    tiles at a time, whatever the size of the region.
    """
    from distributed import KilledWorker, as_completed
    from tqdm import tqdm

    todo = [p for p in job.tiles if not p.done]
    summary.tiles += len(todo)
    summary.tiles_skipped += len(job.tiles) - len(todo)
    if not todo:
        return
    chunk_counts = {p.tile.id: len(tile_chunks(p.tile, settings.chunk_size)) for p in todo}
    settings_future = client.scatter(settings, broadcast=True)
    pending = tile_jobs(client, job, todo, settings.chunk_size)
    plans: dict[str, TilePlan] = {}
    canvases: dict[str, TileCanvas] = {}
    queue = as_completed()

    def submit_next() -> None:
        next_job = next(pending, None)
        if next_job is not None:
            plan, chunk, items, inside = next_job
            plans[plan.tile.id] = plan
            queue.add(
                client.submit(process_chunk, chunk, items, settings_future, inside, pure=False)
            )

    for _ in range(max(2, 2 * sum(client.nthreads().values()))):
        submit_next()
    name = job.region.name
    with (
        tqdm(total=len(todo), desc=f"{name} tiles", unit="tile", disable=not progress) as tbar,
        tqdm(
            total=sum(chunk_counts.values()),
            desc=f"{name} chunks",
            unit="chunk",
            disable=not progress,
        ) as cbar,
    ):
        for future in queue:
            try:
                result: ChunkResult = future.result()
            except KilledWorker:
                raise TimeSenCLIPError(
                    f"a Dask worker died while mapping region {name!r} (out of memory?): lower "
                    "cube.chunk_size or model.batch_size, or give workers more memory, then run "
                    "the same command again to resume."
                ) from None
            submit_next()
            for stage, seconds in result.seconds.items():
                summary.seconds[stage] += seconds
            summary.pixels += result.chunk.pixels
            tile_id = result.chunk.tile.id
            if tile_id not in canvases:
                canvases[tile_id] = TileCanvas(
                    plans[tile_id], settings.layers(), chunk_counts[tile_id]
                )
            canvas = canvases[tile_id]
            canvas.add(result)
            cbar.update()
            if canvas.remaining == 0:
                start = time.perf_counter()
                canvas.write()
                summary.seconds["write"] += time.perf_counter() - start
                del canvases[tile_id], plans[tile_id]
                tbar.update()


def finish_region(
    workflow: Workflow, tiles: list[TilePlan], tasks: tuple[Plan, ...], region_dir: Path
) -> list[Path]:
    """Join the region's finished tiles into one COG per task and UTM zone, with style and Item."""
    folders = {p.tile.id: p.folder for p in tiles}
    zones = zone_groups([p.tile for p in tiles])
    outputs = []
    for epsg, zone_tiles in zones.items():
        folders_of_zone = [folders[t.id] for t in zone_tiles]
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"

        def mosaic(name: str, folders=folders_of_zone, suffix=suffix, **style) -> Path:
            path = region_dir / f"{name}{suffix}.tif"
            tiles = [folder / f"{name}.tif" for folder in folders]
            mosaic_to_cog(tiles, path, blocksize=workflow.outputs.blocksize, **style)
            return path

        valid = mosaic("valid_months", overview_resampling="nearest")
        outputs.append(valid)
        for task in tasks:  # [issue 11] any plan: its layers, styles and Items
            outputs += publish_plan(
                task,
                mosaic,
                year=workflow.year,
                confidence=workflow.outputs.confidence,
                class_resampling=workflow.outputs.overview_resampling,
                valid_months_path=valid,
            )
    return outputs


def write_region_metadata(
    workflow: Workflow, job: RegionJob, tasks: tuple[Plan, ...], provenance: dict
) -> Path:
    """``provenance.json``, written last: its presence marks the region as complete."""
    tiles = job.tiles
    items = {item["id"]: item for plan in tiles for item in plan.items}
    record = {
        "fingerprint": job.fingerprint,
        "workflow": workflow.model_dump(mode="json"),
        **provenance,
        "tasks": [task.record() for task in tasks],  # [issue 11]
        "stac_items": sorted(items),
        "harmonization": [
            dataclasses.asdict(harmonization(item)) for _, item in sorted(items.items())
        ],
        "tiles": [
            {"id": p.tile.id, "epsg": p.tile.epsg, "bounds": list(p.tile.bounds)} for p in tiles
        ],
    }
    return write_provenance(job.folder / "provenance.json", record)
