"""Fingerprints of a run's outputs, and whether an earlier run already finished a region.

A tile's fingerprint hashes everything that changes its pixels and names its folder of pieces; a
region's adds what only changes the final files. A region is complete when its provenance.json
carries the same fingerprint and its files are as that record says.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.maps.classify import Plan
from pipeline.maps.outputs import PROVENANCE
from pipeline.maps.provenance import verify_outputs
from pipeline.workflow.schema import Region, Workflow

log = logging.getLogger(__name__)


def _digest(*parts: object, arrays: tuple[np.ndarray, ...] = ()) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def tile_fingerprint(
    workflow: Workflow, region: Region, checkpoint_hash: str, tasks: Sequence[Plan], device: str
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


def region_fingerprint(workflow: Workflow, tiles_key: str, tasks: Sequence[Plan]) -> str:
    """The tiles' fingerprint plus what only changes the final files (styles, COG layout)."""
    outputs = workflow.outputs.model_dump(mode="json", exclude={"dir"})
    legends = [task.record() for task in tasks]  # names, classes, colours, texts
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
