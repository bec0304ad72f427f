"""Pairs from points read from a source: photos and task labels attached, unusable points dropped,
written chunk by chunk into a pairs store.

Readers: ``encoder.sen4map`` (Sen4Map HDF5) and ``pipeline.cube.samples`` (the pipeline's own
cubes at a points file).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoder.ground import GroundEmbeddings
from encoder.label_routes import RAW_FIELDS, TASKS, LabelRouter, label_text
from encoder.pairs import MONTHS, Pairs, PairsError
from encoder.pairs_store import PairsWriter
from encoder.preprocess import BANDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointRecord:
    """One point as read from a source, before ground photos and labels are attached."""

    point_id: str
    series: np.ndarray  # (12, 10) DN, NaN = missing
    raw: Mapping[str, Any]
    lon: float = math.nan
    lat: float = math.nan
    country: str | None = None


@dataclass
class AssembleStats:
    """Counts of points read and dropped while assembling pairs."""

    read: int = 0
    no_photos: int = 0
    no_months: int = 0

    @property
    def kept(self) -> int:
        return self.read - self.no_photos - self.no_months


def assemble_pairs(
    records: Sequence[PointRecord],
    ground: GroundEmbeddings,
    router: LabelRouter,
    stats: AssembleStats,
    require_photos: bool = True,
) -> Pairs:
    """Attach photos (looked up by country + point id) and task labels; drop unusable points.

    Points without any valid month are dropped, and, with ``require_photos``, points without any
    ground photo; ``stats`` counts both.
    """
    photos = [ground.photos(r.point_id, r.country) for r in records]
    series = np.stack([np.asarray(r.series, np.float32) for r in records]).reshape(
        len(records), MONTHS, len(BANDS)
    )
    month_mask = np.isfinite(series).all(-1)
    photo_mask = np.stack([m for _, m in photos])
    keep = month_mask.any(1)
    stats.read += len(records)
    stats.no_months += int((~keep).sum())
    if require_photos:
        stats.no_photos += int((keep & ~photo_mask.any(1)).sum())
        keep &= photo_mask.any(1)
    routed = [router.route(r.raw) for r in records]
    pairs = Pairs(
        np.array([r.point_id for r in records], dtype=object).astype(str),
        np.array([r.lon for r in records], np.float64),
        np.array([r.lat for r in records], np.float64),
        np.where(month_mask[..., None], series, np.nan).astype(np.float32),
        month_mask,
        np.stack([p for p, _ in photos]),
        photo_mask,
        {t: np.array([r[t] for r in routed], np.int16) for t in router.tasks},
        {
            f: np.array([label_text(r.raw.get(f)) for r in records], dtype=object).astype(str)
            for f in RAW_FIELDS
        },
    )
    return pairs.subset(keep)


def _batched(items: Iterable[PointRecord], size: int) -> Iterator[list[PointRecord]]:
    batch: list[PointRecord] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_records(
    records: Iterable[PointRecord],
    ground: GroundEmbeddings,
    out: str | Path,
    *,
    tasks: Sequence[str] = TASKS,
    require_photos: bool = True,
    chunk: int = 4096,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> AssembleStats:
    """Assemble ``records`` with ``ground`` photos into a pairs store at ``out``, chunk by chunk."""
    if not len(ground):
        raise PairsError("the ground embedding file is empty: embed the photos first")
    router = LabelRouter(tasks)
    stats = AssembleStats()
    with PairsWriter(
        out, ground_dim=ground.dim, tasks=tasks, attrs=attrs, chunk=chunk, overwrite=overwrite
    ) as writer:
        for batch in _batched(records, chunk):
            writer.append(assemble_pairs(batch, ground, router, stats, require_photos))
        writer.group.attrs["dropped"] = {"no_photos": stats.no_photos, "no_months": stats.no_months}
    router.warn_unknown()
    log.info(
        "wrote %d pairs to %s (%d read, %d without photos, %d without valid months)",
        stats.kept,
        out,
        stats.read,
        stats.no_photos,
        stats.no_months,
    )
    return stats
