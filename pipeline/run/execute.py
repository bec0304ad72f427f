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
from typing import NamedTuple

import numpy as np

from encoder.checkpoint import file_sha256, load_encoder, resolve_source
from encoder.conventions import ConventionOverrides
from encoder.device import resolve_device
from encoder.prompts import TextEncoder
from pipeline.cube.composite import CubeOptions
from pipeline.cube.reader import GDAL_OPTIONS
from pipeline.geo.tiles import Tile, zone_groups
from pipeline.maps.classify import Plan, plan_workflow_task  # [issue 11]
from pipeline.maps.cog import mosaic_to_cog
from pipeline.maps.outputs import PROVENANCE, VALID_MONTHS
from pipeline.maps.provenance import record_outputs, verify_outputs, write_provenance
from pipeline.maps.stac_items import note_skips, write_collection
from pipeline.maps.vrt import write_vrt
from pipeline.plan.plan import (
    FLOP_PER_PIXEL,
    RegionPlan,
    RegionTarget,
    RunPlan,
    describe,
    make_plan,
    stac_source,
)
from pipeline.run.cluster_errors import ClusterFailureError, cluster_failure_message
from pipeline.run.lock import output_lock
from pipeline.run.worker_tasks import (
    ChunkReport,
    ChunkSettings,
    TileReport,
    finish_tile,
    layer_styles,
    process_chunk,
)
from pipeline.workflow.schema import Region, Workflow
from timesenclip.common.atomic import remove_stale_temporaries, write_text_atomic
from timesenclip.common.errors import TimeSenCLIPError

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
    scheduler: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Produce every region's maps; finished tiles and regions are skipped on a rerun.

    Everything that can fail on user input (checkpoint, prompts, STAC searches) happens before
    the cluster starts; regions completed by an earlier run are neither searched nor started on.
    The plan (``pipeline.plan.plan``) is made once, then chunk and tile tasks run on the cluster.
    """
    summary = RunSummary()
    started = time.perf_counter()
    if dry_run:
        targets = [
            RegionTarget(r, workflow.outputs.dir / r.name, Path(), "") for r in workflow.regions
        ]
        plan = make_plan(workflow, targets, concurrency=workflow.stac.concurrency)
        print(describe(plan, workflow, cpu_pixels_per_second()))
        return summary
    with output_lock(workflow.outputs.dir):  # one run per output folder
        source, checkpoint_hash, dim, conventions = check_checkpoint(workflow)
        tasks = plan_tasks(workflow, dim)
        cube = workflow.cube
        settings = ChunkSettings(
            year=workflow.year,
            resolution=cube.resolution,
            chunk_size=cube.chunk_size,
            cube=CubeOptions(
                cloud_mask=tuple(cube.cloud_mask),
                mask_mode=cube.mask_mode,
                resampling=cube.resampling,
                on_bad_asset=workflow.stac.on_bad_asset,
                read_concurrency=cube.read_concurrency,
                read_retries=cube.read_retries,
                read_backoff=cube.read_backoff,
                temporal=cube.temporal,
                sign_hrefs=stac_source(workflow).resolved_provider == "planetary-computer",
            ),
            checkpoint=source,
            device=str(resolve_device(workflow.model.device)),
            batch_size=workflow.model.batch_size,
            runtime=workflow.model.runtime,
            precision=workflow.model.precision,
            tasks=tuple(tasks),
            confidence=workflow.outputs.confidence,
            conventions=convention_overrides(workflow),
            gdal=tuple({**GDAL_OPTIONS, **cube.gdal}.items()),
            blocksize=workflow.outputs.blocksize,
            overview_resampling=workflow.outputs.overview_resampling,
        )
        targets = []
        for region in workflow.regions:
            folder = workflow.outputs.dir / region.name
            tiles_key = tile_fingerprint(workflow, region, checkpoint_hash, tasks, settings.device)
            fingerprint = region_fingerprint(workflow, tiles_key, tasks)
            if region_is_complete(folder, fingerprint):
                log.info("region %s is complete: skipped", region.name)
                # A kill during the last clean-up leaves these behind.
                shutil.rmtree(folder / ".tiles", ignore_errors=True)
                remove_stale_temporaries(folder)
                summary.tiles_skipped += len(workflow.tiles(region))
                continue
            targets.append(
                RegionTarget(region, folder, folder / ".tiles" / tiles_key[:16], fingerprint)
            )
        provenance = {
            "checkpoint": source,
            "checkpoint_sha256": checkpoint_hash,
            "input_conventions": conventions,
        }
        if targets:
            start = time.perf_counter()
            plan = make_plan(workflow, targets, concurrency=workflow.stac.concurrency)
            summary.seconds["search"] += time.perf_counter() - start
            with dask_client(workflow, scheduler, settings.device) as client:
                for region in plan.regions:
                    run_region(
                        client, workflow, plan, region, settings, provenance, summary, progress
                    )
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def run_region(
    client,
    workflow: Workflow,
    plan: RunPlan,
    region: RegionPlan,
    settings: ChunkSettings,
    provenance: dict,
    summary: RunSummary,
    progress: bool,
) -> None:
    """Map one region: its unfinished tiles on the cluster, then its mosaics and metadata."""
    if region.folder.exists():
        # From here on the outputs change: an older provenance.json must not vouch for them.
        (region.folder / PROVENANCE).unlink(missing_ok=True)
        for path in remove_stale_temporaries(region.folder):
            log.info("removed %s, left by an interrupted run", path)
    layout = region_layout(region, workflow.outputs.mosaic_max_pixels)
    settings = dataclasses.replace(settings, tile_overviews=layout == "tiles")
    if workflow.outputs.embeddings:
        from pipeline.store.embeddings import create_stores

        dim = settings.tasks[0].weights.shape[1]
        store = create_stores(  # [issue 11] the store records the checkpoint it came from
            region.folder,
            [p.tile for p in region.tiles],
            workflow,
            dim,
            checkpoint_sha256=provenance["checkpoint_sha256"],
        )
        settings = dataclasses.replace(settings, embeddings_store=store)
        summary.outputs.append(store)
    reports = run_tiles(client, workflow, plan, region, settings, summary, progress)
    start = time.perf_counter()
    finish = finish_tiled if layout == "tiles" else finish_mosaics
    outputs = finish(client, workflow, region, settings.tasks)
    skipped = [s for r in reports.values() for s in r.skipped]
    note_skips(outputs, skipped)
    retry = [tile for tile, r in reports.items() if r.to_retry]
    summary.skipped_assets += len(skipped)
    summary.transient_skips += sum(bool(s.get("transient")) for s in skipped)
    summary.tiles_to_retry += len(retry)
    summary.outputs += outputs
    if settings.embeddings_store:  # provenance vouches for the store too
        outputs.append(settings.embeddings_store)
    summary.outputs.append(
        write_region_metadata(workflow, plan, region, settings.tasks, reports, provenance, outputs)
    )
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


def region_layout(region: RegionPlan, max_pixels: int) -> str:
    """``"cog"``: one COG per layer and zone; ``"tiles"`` above ``max_pixels`` in any zone."""
    zones = zone_groups([p.tile for p in region.tiles])
    largest = max(_zone_pixels(tiles) for tiles in zones.values())
    return "tiles" if largest > max_pixels else "cog"


def _zone_pixels(tiles: list[Tile]) -> int:
    xmin = min(t.bounds[0] for t in tiles)
    ymin = min(t.bounds[1] for t in tiles)
    xmax = max(t.bounds[2] for t in tiles)
    ymax = max(t.bounds[3] for t in tiles)
    res = tiles[0].resolution
    return round((xmax - xmin) / res) * round((ymax - ymin) / res)


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


class Checkpoint(NamedTuple):
    """What workers load (a hub source stays a hub source: each worker, possibly on another
    machine, fetches it into its own cache), the file's sha256, the embedding width and the
    input conventions in force."""

    source: str
    sha256: str
    dim: int
    conventions: dict


def check_checkpoint(workflow: Workflow) -> Checkpoint:
    """Resolve and load the checkpoint once up front, so a bad one fails before any work."""
    source = workflow.model.checkpoint
    path = resolve_source(source)
    model = load_encoder(path, overrides=convention_overrides(workflow))
    worker_source = source if source.startswith("hf-hub:") else str(path)
    return Checkpoint(
        worker_source, file_sha256(path), model.config.dim, model.conventions.to_dict()
    )


def convention_overrides(workflow: Workflow) -> ConventionOverrides | None:
    """The workflow's input conventions over the checkpoint's own (None: the checkpoint's)."""
    model = workflow.model
    overrides = ConventionOverrides(
        band_order=tuple(model.band_order) if model.band_order else None,
        constants_order=tuple(model.constants_order) if model.constants_order else None,
        single_token_position=model.single_token_position,
    )
    return overrides or None


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

    Device type, runtime and precision are in it because they round differently; embeddings
    are because a tile finished without them left nothing in the store.
    """
    return _digest(
        checkpoint_hash,
        workflow.year,
        # Read tuning changes no pixel: leave it out, so tuning it does not redo finished work.
        workflow.cube.model_dump(
            mode="json", exclude={"read_concurrency", "read_retries", "read_backoff", "gdal"}
        ),
        workflow.stac.model_dump(mode="json", exclude={"concurrency", "retries", "allowed_paths"}),
        region.area,
        workflow.model.model_dump(
            mode="json",
            include={
                "band_order",
                "constants_order",
                "single_token_position",
                "runtime",
                "precision",
            },
        ),
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
    """Whether a region's provenance matches ``fingerprint`` and its files are as it recorded."""
    provenance = region_dir / PROVENANCE
    if not provenance.exists():
        return False
    try:
        record = json.loads(provenance.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # damaged after the run wrote it
    if record.get("fingerprint") != fingerprint or record.get("tiles_to_retry"):
        return False
    if "outputs" in record:
        problems = verify_outputs(region_dir, record["outputs"])
    else:
        problems = ["its provenance.json, written by an older version, lists no outputs"]
    if problems:
        log.warning("region %s: redone, %s", region_dir.name, "; ".join(problems))
    return not problems


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


def run_tiles(
    client,
    workflow: Workflow,
    plan: RunPlan,
    region: RegionPlan,
    settings: ChunkSettings,
    summary: RunSummary,
    progress: bool,
) -> dict[str, TileReport]:
    """Run every unfinished tile's chunk tasks and tile task, a bounded number at a time.

    Settings go to the scheduler once, as a task it can recompute; a tile's task depends on its
    chunk tasks, so the scheduler reruns whatever a lost worker held. The client only counts
    progress: it holds no pixels.
    """
    from distributed import as_completed
    from tqdm import tqdm

    reports = {p.tile.id: TileReport.read(p.folder) for p in region.tiles if p.done}
    todo = [p for p in region.tiles if not p.done]
    summary.tiles += len(todo)
    summary.tiles_skipped += len(region.tiles) - len(todo)
    if not todo:
        return reports
    shared = client.submit(_identity, settings, pure=False)
    pending = iter(todo)
    tile_of: dict[str, str] = {}  # future key -> tile id, for the futures of tile tasks
    in_flight: dict[str, list] = {}  # tile id -> its futures, kept until the tile is done
    queue = as_completed(with_results=True, raise_errors=False)
    chunks_running = 0

    def submit_tile() -> bool:
        nonlocal chunks_running
        tile = next(pending, None)
        if tile is None:
            return False
        futures = [
            client.submit(process_chunk, task, shared, pure=False)
            for task in plan.chunk_tasks(tile, region.region)
        ]
        done = client.submit(finish_tile, tile, shared, *futures, pure=False)
        tile_of[done.key] = tile.tile.id
        in_flight[tile.tile.id] = [*futures, done]
        chunks_running += len(futures)
        queue.update([*futures, done])
        return True

    def fill() -> None:
        slots = max(2, 2 * sum(client.nthreads().values()))
        while (chunks_running < slots or not in_flight) and submit_tile():
            pass

    name = region.region.name
    watch = ProgressWatch.of(client, workflow)
    chunk_total = sum(plan.chunk_count(p) for p in todo)
    with (
        tqdm(total=len(todo), desc=f"{name} tiles", unit="tile", disable=not progress) as tbar,
        tqdm(total=chunk_total, desc=f"{name} chunks", unit="chunk", disable=not progress) as cbar,
    ):
        fill()
        for future, result in finished(queue, watch, name):
            if isinstance(result, ChunkReport):
                chunks_running -= 1
                summary.pixels += result.pixels
                for stage, seconds in result.seconds.items():
                    summary.seconds[stage] += seconds
                cbar.update()
            else:
                reports[result.tile_id] = result
                summary.seconds["write"] += result.seconds.get("write", 0.0)
                del in_flight[tile_of.pop(future.key)]  # releases its chunk results too
                tbar.update()
            fill()
    return reports


def _identity(value):
    return value


def finished(queue, watch: ProgressWatch, region: str) -> Iterator[tuple]:
    """``(future, result)`` for the futures of ``queue`` (an ``as_completed(with_results=True,
    raise_errors=False)``) as they finish, more being added meanwhile, while ``watch`` checks that
    the cluster still makes progress.

    The queue fetches each result in the background as soon as its task ends: a result whose
    worker died meanwhile is recomputed by the scheduler without ever blocking this loop.
    """
    while not queue.is_empty():
        batch = queue.next_batch(block=False) if queue.has_ready() else []
        if not batch:
            watch.check(region)
            time.sleep(0.05)
            continue
        watch.progressed()
        for future, outcome in batch:
            yield future, task_result(future, outcome, region)


class ProgressWatch:
    """Ends a run that makes no progress: no task finished for ``stall`` s, or no worker for
    ``no_worker`` s (every worker lost, say), each with a message saying so."""

    def __init__(self, client, stall: float, no_worker: float) -> None:
        self.client, self.stall, self.no_worker = client, stall, no_worker
        self.last = time.monotonic()
        self.alone_since: float | None = None
        self.checked = 0.0

    @classmethod
    def of(cls, client, workflow: Workflow) -> ProgressWatch:
        return cls(client, workflow.dask.stall_timeout, workflow.dask.no_worker_timeout)

    def progressed(self) -> None:
        self.last = time.monotonic()

    def check(self, region: str) -> None:
        now = time.monotonic()
        if now - self.checked < 1.0:
            return
        self.checked = now
        if self.client.nthreads():
            self.alone_since = None
        else:
            self.alone_since = self.alone_since or now
            if now - self.alone_since > self.no_worker:
                raise ClusterFailureError(
                    f"the Dask cluster has had no worker for {self.no_worker:.0f} s while mapping "
                    f"region {region!r}: start workers (or check why they died), then run the "
                    "same command again to resume."
                )
        if now - self.last > self.stall:
            raise ClusterFailureError(
                f"no task finished for {self.stall:.0f} s while mapping region {region!r}: the "
                "workers may be stuck on reads or starved of memory. Check the Dask dashboard, "
                "raise dask.stall_timeout if chunks are simply slow, and run the same command "
                "again to resume."
            )


def task_result(future, outcome, region: str):
    """A finished task's result, from what ``as_completed`` fetched: a task's own error is
    raised as it is when it is ours, and a cluster failure becomes one clear error (exit 3)."""
    if future.status not in ("error", "cancelled"):
        return outcome
    error = outcome[1] if isinstance(outcome, tuple) else outcome  # (type, error, traceback)
    if isinstance(error, TimeSenCLIPError):
        raise error
    message = cluster_failure_message(error, region)
    if message is None:
        raise error
    raise ClusterFailureError(message) from None


def finish_mosaics(
    client, workflow: Workflow, region: RegionPlan, tasks: tuple[Plan, ...]
) -> list[Path]:
    """One COG per layer and UTM zone, the mosaics built in parallel on the cluster, then each
    map's styles and STAC Item."""
    from distributed import as_completed

    zones = zone_groups([p.tile for p in region.tiles])
    folders = {p.tile.id: p.folder for p in region.tiles}
    styles = layer_styles(tasks, workflow.outputs.confidence, workflow.outputs.overview_resampling)
    futures = {}
    for epsg, tiles in zones.items():
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"
        for layer, style in styles.items():
            path = region.folder / f"{layer}{suffix}.tif"
            pieces = [folders[t.id] / f"{layer}.tif" for t in tiles]
            futures[(epsg, layer)] = client.submit(
                mosaic_to_cog,
                pieces,
                path,
                blocksize=workflow.outputs.blocksize,
                pure=False,
                **style,
            )
    keys = {f.key: key for key, f in futures.items()}
    watch = ProgressWatch.of(client, workflow)
    queue = as_completed(futures.values(), with_results=True, raise_errors=False)
    paths = {keys[f.key]: path for f, path in finished(queue, watch, region.region.name)}
    outputs = list(paths.values())
    for epsg in zones:
        for task in tasks:  # [issue 11] any plan: its styles and Items
            outputs += task.describe(
                {name: paths[(epsg, name)] for name in task.layers(workflow.outputs.confidence)},
                year=workflow.year,
                valid_months_path=paths[(epsg, VALID_MONTHS)],
            )
    return outputs


def finish_tiled(
    client, workflow: Workflow, region: RegionPlan, tasks: tuple[Plan, ...]
) -> list[Path]:
    """Per layer and UTM zone a folder of the tiles' COGs (styled, with overviews), a VRT over
    them styled like its tiles and, for maps with Items, a STAC Collection of per-tile Items."""
    zones = zone_groups([p.tile for p in region.tiles])
    folders = {p.tile.id: p.folder for p in region.tiles}
    styles = layer_styles(tasks, workflow.outputs.confidence, workflow.outputs.overview_resampling)
    outputs = []
    for epsg, tiles in zones.items():
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"
        placed: dict[str, list[Path]] = {}
        for layer in styles:
            folder = region.folder / f"{layer}{suffix}"
            folder.mkdir(parents=True, exist_ok=True)
            placed[layer] = []
            for tile in tiles:
                target = folder / f"{tile.id}.tif"
                source = folders[tile.id] / f"{layer}.tif"
                if source.exists():  # else moved there by an interrupted finish
                    for sidecar in source.parent.glob(f"{layer}.tif.*"):
                        os.replace(
                            sidecar, folder / f"{tile.id}.tif{sidecar.name[len(layer) + 4 :]}"
                        )
                    os.replace(source, target)
                placed[layer].append(target)
            vrt = write_vrt(region.folder / f"{layer}{suffix}.vrt", placed[layer])
            outputs.append(vrt)
        for task in tasks:  # [issue 11] any plan: each tile's styles and Items
            for k in range(len(tiles)):
                outputs += task.describe(
                    {name: placed[name][k] for name in task.layers(workflow.outputs.confidence)},
                    year=workflow.year,
                    valid_months_path=placed[VALID_MONTHS][k],
                )
        for layer, tile_maps in placed.items():
            style = tile_maps[0].with_suffix(".qml")
            if style.exists():  # the VRT is drawn like its tiles
                vrt_style = region.folder / f"{layer}{suffix}.qml"
                outputs.append(write_text_atomic(vrt_style, style.read_text()))
            items = [tile_map.with_suffix(".json") for tile_map in tile_maps]
            if all(item.exists() for item in items):
                outputs.append(
                    write_collection(
                        region.folder / f"{layer}{suffix}" / "collection.json",
                        items,
                        title=f"{layer} {workflow.year}, region {region.region.name}",
                    )
                )
    return outputs


def write_region_metadata(
    workflow: Workflow,
    plan: RunPlan,
    region: RegionPlan,
    tasks: tuple[Plan, ...],
    reports: dict[str, TileReport],
    provenance: dict,
    outputs: list[Path],
) -> Path:
    """``provenance.json``, written last: its presence marks the region as complete.

    Item ids come from what the chunks read, not from what the search found.
    """
    used = sorted({i for r in reports.values() for i in r.used})
    refs = {r.id: r for r in plan.refs}
    record = {
        "fingerprint": region.fingerprint,
        "workflow": workflow.model_dump(mode="json"),
        **provenance,
        "tasks": [task.record() for task in tasks],  # [issue 11]
        "stac_items": used,
        "harmonization": [
            {"item_id": i, "offset": refs[i].offset, "rule": refs[i].rule}
            for i in used
            if i in refs
        ],
        "items_refused": list(plan.skipped),
        "tiles": [
            {
                "id": p.tile.id,
                "epsg": p.tile.epsg,
                "bounds": list(p.tile.bounds),
                "items_used": reports[p.tile.id].used,
                "skipped": reports[p.tile.id].skipped,
            }
            for p in region.tiles
        ],
        "tiles_without_items": [t.id for t in region.empty],
        # Tiles with scenes left out for failures that may pass: the next run redoes them.
        "tiles_to_retry": [p.tile.id for p in region.tiles if reports[p.tile.id].to_retry],
        "outputs": record_outputs(region.folder, outputs),  # what resume verifies
    }
    return write_provenance(region.folder / PROVENANCE, record)
