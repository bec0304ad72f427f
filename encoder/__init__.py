"""The TimeSenCLIP encoder: a small Transformer over 12-month Sentinel-2 pixel series,
aligned to CLIP."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encoder.checkpoint import EncoderMetadata, load_encoder, save_checkpoint
    from encoder.conventions import ConventionOverrides, Conventions
    from encoder.model import EncoderConfig, TimeSenCLIPEncoder
    from encoder.preprocess import BANDS, normalize

# Exported lazily (PEP 562): importing a light submodule such as encoder.classes must not pull in
# torch and huggingface_hub through this file, or the command line's deferred imports are lost.
_EXPORTS = {
    "BANDS": "encoder.preprocess",
    "ConventionOverrides": "encoder.conventions",
    "Conventions": "encoder.conventions",
    "EncoderConfig": "encoder.model",
    "EncoderMetadata": "encoder.checkpoint",
    "TimeSenCLIPEncoder": "encoder.model",
    "load_encoder": "encoder.checkpoint",
    "normalize": "encoder.preprocess",
    "save_checkpoint": "encoder.checkpoint",
}

__all__ = [
    "BANDS",
    "ConventionOverrides",
    "Conventions",
    "EncoderConfig",
    "EncoderMetadata",
    "TimeSenCLIPEncoder",
    "load_encoder",
    "normalize",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value
