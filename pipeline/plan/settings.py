"""What every chunk of a run shares, decided once: the checked checkpoint and its conventions,
the task plans with their prompts embedded, the cube options, device, runtime and precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from encoder.checkpoint import file_sha256, load_encoder, resolve_source
from encoder.conventions import ConventionOverrides
from encoder.device import resolve_device
from encoder.prompts import TextEncoder
from pipeline.cube.composite import CubeOptions
from pipeline.cube.reader import GDAL_OPTIONS
from pipeline.maps.classify import Plan, plan_workflow_task
from pipeline.maps.outputs import OUTSIDE_REGION, VALID_MONTHS
from pipeline.plan.scenes import stac_source
from pipeline.workflow.schema import Workflow
from timesenclip.common.errors import TimeSenCLIPError


class Checkpoint(NamedTuple):
    """What workers load (a hub source stays a hub source: each worker, possibly on another
    machine, fetches it into its own cache), the file's sha256, the embedding width and the
    input conventions in force."""

    source: str
    sha256: str
    dim: int
    conventions: dict


@dataclass(frozen=True)
class ChunkSettings:
    """What every chunk of a run shares; sent with each task, so any worker can run any task."""

    year: int
    resolution: float
    chunk_size: int
    cube: CubeOptions
    checkpoint: str
    device: str
    batch_size: int
    tasks: tuple[Plan, ...]
    confidence: bool
    conventions: ConventionOverrides | None = None  # the workflow's over the checkpoint's
    runtime: str = "auto"  # encoder.runtime: auto, torch or onnx
    precision: str = "fp32"  # or bf16, when the workflow asks
    gdal: tuple[tuple[str, str], ...] = tuple(GDAL_OPTIONS.items())
    embeddings_store: Path | None = None
    tile_overviews: bool = False  # True when the tiles are the final outputs
    blocksize: int = 512
    overview_resampling: str = "mode"

    def layers(self) -> dict[str, int | None]:
        """The uint8 rasters each chunk yields, by name, with their nodata values."""
        layers: dict[str, int | None] = {VALID_MONTHS: OUTSIDE_REGION}
        for task in self.tasks:  # each plan names its own layers
            layers.update(task.layers(self.confidence))
        return layers


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


def plan_tasks(workflow: Workflow, dim: int) -> tuple[Plan, ...]:
    """Every task's plan, its prompts embedded once here (classes or similarity, by mode)."""
    here = workflow.model.device if workflow.dask.kind == "local" else "auto"
    text = TextEncoder(
        model=workflow.model.clip.model,
        pretrained=workflow.model.clip.pretrained,
        device=str(resolve_device(here)),
    )
    tasks = []
    for task in workflow.tasks:
        plan = plan_workflow_task(task, text)
        if plan.weights.shape[1] != dim:
            raise TimeSenCLIPError(
                f"the CLIP text model {workflow.model.clip.model!r} gives "
                f"{plan.weights.shape[1]}-d "
                f"embeddings but the encoder checkpoint gives {dim}-d ones: use the CLIP model the "
                "encoder was trained against (ViT-B-32 / openai for the published weights)."
            )
        tasks.append(plan)
    return tuple(tasks)


def chunk_device(workflow: Workflow) -> str:
    """The device chunks encode on. A local cluster runs on this machine: resolved here, so a
    device it lacks fails before any work. Any other cluster's workers resolve it themselves, as
    a login node without a GPU submits jobs to GPU nodes."""
    if workflow.dask.kind == "local":
        return str(resolve_device(workflow.model.device))
    return workflow.model.device


def chunk_settings(
    workflow: Workflow, checkpoint: Checkpoint, tasks: tuple[Plan, ...]
) -> ChunkSettings:
    """The settings every chunk task of ``workflow`` shares."""
    cube = workflow.cube
    return ChunkSettings(
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
        checkpoint=checkpoint.source,
        device=chunk_device(workflow),
        batch_size=workflow.model.batch_size,
        runtime=workflow.model.runtime,
        precision=workflow.model.precision,
        tasks=tasks,
        confidence=workflow.outputs.confidence,
        conventions=convention_overrides(workflow),
        gdal=tuple({**GDAL_OPTIONS, **cube.gdal}.items()),
        blocksize=workflow.outputs.blocksize,
        overview_resampling=workflow.outputs.overview_resampling,
    )
