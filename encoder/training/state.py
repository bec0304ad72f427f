"""Training checkpoints on disk: ``<out>/checkpoints/step_NNNNNNNN.pt`` (the encoder, written by
``encoder.checkpoint.save_checkpoint``) with a ``.train_state.pt`` sidecar (optimizer, scheduler,
queue, pooling layer, logit scale, step, config); ``<out>/encoder.pt`` (+ sidecar) at the end.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from timesenclip.common.errors import TrainingError

STATE_FORMAT = "timesenclip-train-state"
STATE_SUFFIX = ".train_state.pt"
_CKPT_NAME = re.compile(r"^step_(\d{8})\.pt$")


def step_path(out_dir: Path, step: int) -> Path:
    """Where the periodic checkpoint of ``step`` goes."""
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}.pt"


def state_path(checkpoint: Path) -> Path:
    """The training-state sidecar of an encoder checkpoint."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + STATE_SUFFIX)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` whose sidecar is also complete."""
    folder = Path(out_dir) / "checkpoints"
    found = sorted(
        p for p in folder.glob("step_*.pt") if _CKPT_NAME.match(p.name) and state_path(p).exists()
    )
    return found[-1] if found else None


def read_train_state(checkpoint: str | Path) -> dict[str, Any]:
    """The training-state sidecar of ``checkpoint`` (see :func:`state_path`)."""
    path = state_path(Path(checkpoint))
    if not path.is_file():
        raise TrainingError(f"{checkpoint} has no training state beside it ({path.name})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a timesenclip training state")
    return state


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (each with its sidecar)."""
    folder = Path(out_dir) / "checkpoints"
    kept = sorted(p for p in folder.glob("step_*.pt") if _CKPT_NAME.match(p.name))
    for old in kept[:-keep]:
        state_path(old).unlink(missing_ok=True)
        old.unlink(missing_ok=True)
