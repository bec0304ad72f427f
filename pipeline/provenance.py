"""The provenance record every run writes beside its maps."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import rasterio

from encoder.atomic import write_text_atomic
from encoder.version import package_version


def environment() -> dict[str, str]:
    """Versions that explain how a map was made; ``write_provenance`` adds any that are missing."""
    return {
        "package_version": package_version(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "torch_version": package_version("torch"),
        "gdal_version": rasterio.__gdal_version__,
    }


def _to_json(value: Any) -> Any:
    # The record is assembled from run objects: paths, dates, numpy numbers, dataclasses, sets.
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"provenance value {value!r} ({type(value).__name__}) is not JSON-serialisable")


def provenance_text(record: Mapping[str, Any]) -> str:
    """``record`` plus the missing ``environment()`` entries, as pretty JSON with sorted keys."""
    full = {**environment(), **record}
    return json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False, default=_to_json) + "\n"


def write_provenance(path: Path | str, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (workflow, checkpoint, prompts, item ids, harmonisation) atomically."""
    return write_text_atomic(path, provenance_text(record))
