"""The plan of a run: every decision made before any work starts, in frozen objects that the run
executes, the dry run prints, and resume and provenance read."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.maps.outputs import EMBEDDINGS_STORE
from pipeline.plan.fingerprints import region_fingerprint, region_is_complete, tile_fingerprint
from pipeline.plan.scenes import RegionPlan, RegionTarget, ScenePlan, make_plan
from pipeline.plan.settings import (
    Checkpoint,
    ChunkSettings,
    check_checkpoint,
    chunk_settings,
    plan_tasks,
)
from pipeline.workflow.schema import Workflow


@dataclass(frozen=True)
class RunPlan:
    """A run's checked checkpoint, its chunks' shared settings (task plans included), the
    regions an earlier run finished and the tiles, scenes and layout of every other region."""

    workflow: Workflow
    checkpoint: Checkpoint
    settings: ChunkSettings
    complete: tuple[RegionTarget, ...]  # finished by an earlier run: skipped
    scenes: ScenePlan  # the regions to map

    @property
    def regions(self) -> tuple[RegionPlan, ...]:
        return self.scenes.regions

    def chunk_settings(self, region: RegionPlan) -> ChunkSettings:
        """The settings of ``region``'s chunks: tiles with overviews when they are the outputs,
        and the region's embeddings store when the run keeps embeddings."""
        keep = self.workflow.outputs.embeddings
        return replace(
            self.settings,
            tile_overviews=region.layout == "tiles",
            embeddings_store=region.folder / EMBEDDINGS_STORE if keep else None,
        )

    def provenance(self) -> dict:
        """What provenance.json says of the model."""
        return {
            "checkpoint": self.checkpoint.source,
            "checkpoint_sha256": self.checkpoint.sha256,
            "input_conventions": self.checkpoint.conventions,
        }


def plan_run(workflow: Workflow) -> RunPlan:
    """Decide everything about ``workflow``'s run: check the checkpoint, embed every task's
    prompts, fingerprint each region and find those already complete, then search and tile the
    others. Anything wrong with the user's input fails here, before any work."""
    checkpoint = check_checkpoint(workflow)
    tasks = plan_tasks(workflow, checkpoint.dim)
    settings = chunk_settings(workflow, checkpoint, tasks)
    todo, complete = [], []
    for region in workflow.regions:
        folder = workflow.region_folder(region)
        tiles_key = tile_fingerprint(workflow, region, checkpoint.sha256, tasks, settings.device)
        fingerprint = region_fingerprint(workflow, tiles_key, tasks)
        target = RegionTarget(region, folder, folder / ".tiles" / tiles_key[:16], fingerprint)
        (complete if region_is_complete(folder, fingerprint) else todo).append(target)
    scenes = make_plan(workflow, todo, concurrency=workflow.stac.concurrency)
    return RunPlan(workflow, checkpoint, settings, tuple(complete), scenes)
