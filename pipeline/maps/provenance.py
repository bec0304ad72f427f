"""The provenance record every run writes beside its maps, and the outputs it vouches for.

The record lists the size, modification time and sha256 of every output file, so a rerun can
check that a region recorded as complete still is: a file missing, resized or with other content
makes the region be redone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import json
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import rasterio

from pipeline.maps.outputs import PROVENANCE
from timesenclip.common.atomic import write_text_atomic
from timesenclip.common.files import file_sha256
from timesenclip.common.version import package_version


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


def recorded_skips(folder: Path) -> list[dict] | None:
    """The asset reads a completed run in ``folder`` left out, over all its tiles; ``None``
    where no readable provenance.json is there."""
    try:
        record = json.loads((folder / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    return [skip for tile in record.get("tiles", []) for skip in tile.get("skipped", [])]


def _members(path: Path) -> list[Path]:
    """The files of an output: a folder's (an embeddings store) or the file and its sidecars
    (``x.tif.aux.xml`` holds a class map's category names)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path, *sorted(path.parent.glob(f"{glob.escape(path.name)}.*"))]


def record_outputs(folder: Path, paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """``{path relative to folder: {size, mtime_ns, sha256}}`` for every file of ``paths``."""
    files: dict[str, dict[str, Any]] = {}
    for path in paths:
        for file in _members(path):
            stat = file.stat()
            files[file.relative_to(folder).as_posix()] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": file_sha256(file),
            }
    return files


def verify_outputs(folder: Path, recorded: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What no longer matches ``record_outputs``'s record: one line per missing or changed file.

    Cheap where nothing changed: a file of the recorded size and modification time is taken as
    is; only one whose time changed (copied, touched, rewritten) is hashed.
    """
    problems = []
    for name, expected in recorded.items():
        path = folder / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if stat.st_size != expected["size"]:
            problems.append(f"{name} has {stat.st_size:,} bytes, not {expected['size']:,}")
        elif stat.st_mtime_ns != expected["mtime_ns"] and file_sha256(path) != expected["sha256"]:
            problems.append(f"{name} has other content than when it was written")
    return problems
