"""Per-pixel embedding of monthly composites with the TimeSenCLIP encoder."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from encoder import ConventionOverrides, Conventions, TimeSenCLIPEncoder, load_encoder, normalize
from encoder.inference import embed, embed_scores
from pipeline.maps.classify import Plan

log = logging.getLogger(__name__)

_PIXEL_BLOCK = 4096  # pixels a series is made of at a time
_ROWS_AT_ONCE = 65536  # pixels embedded at a time
# Pixels of a chunk turned into series, embedded and scored at a time on a CPU: a part's series
# (480 B a pixel) and embeddings stay a few tens of MB beside the composite.
CPU_PART = 16384

# A Dask worker runs several tasks in threads: they share one model, loaded once.
_LOAD_LOCK = threading.Lock()


def cached_encoder(
    source: str, device: str, overrides: ConventionOverrides | None = None
) -> TimeSenCLIPEncoder:
    """The encoder for ``source`` on ``device`` with its conventions changed by ``overrides`` (a
    workflow's ``model`` settings), loaded once per process (one per Dask worker)."""
    with _LOAD_LOCK:
        return _load_encoder(source, device, overrides)


@functools.lru_cache(maxsize=2)
def _load_encoder(
    source: str, device: str, overrides: ConventionOverrides | None
) -> TimeSenCLIPEncoder:
    log.info("loading encoder %s on %s", source, device)
    return load_encoder(source, map_location=device, overrides=overrides).eval()


def pixel_series(
    composite: np.ndarray, conventions: Conventions | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a DN composite ``(T, 10, h, w)`` (bands in BANDS order; T = 12 months, 4 seasons
    or 1) into model input ``(h*w, T, 10)``, bands reordered and normalised by ``conventions``
    (the model's ``.conventions``; default the published ones).

    Returns the series and the month mask ``(h*w, T)``: a month is present where all ten bands
    have a value, so months without a valid observation are left out, not invented.
    """
    months, bands, h, w = composite.shape
    return _series(composite.reshape(months, bands, h * w), conventions)


def _series(grid: np.ndarray, conventions: Conventions | None) -> tuple[np.ndarray, np.ndarray]:
    """``pixel_series`` of a ``(T, 10, pixels)`` grid."""
    months, _, pixels = grid.shape
    series = np.empty((pixels, months, grid.shape[1]), np.float32)
    present = np.empty((months, pixels), bool)
    # A block of pixels at a time, small enough to stay in cache: checked and normalised where
    # each band is a row, then to pixel-major a month (ten rows) at a time. One (T x 10,
    # pixels) transpose of the whole would crawl through memory.
    for start in range(0, pixels, _PIXEL_BLOCK):
        block = slice(start, start + _PIXEL_BLOCK)
        np.logical_and.reduce(np.isfinite(grid[:, :, block]), axis=1, out=present[:, block])
        part = normalize(grid[:, :, block], band_axis=1, conventions=conventions)
        for month in range(months):
            series[block, month] = part[month].T
    return series, np.ascontiguousarray(present.T)


def score_composite(
    model: TimeSenCLIPEncoder,
    composite: np.ndarray,
    plans: Sequence[Plan],
    *,
    confidence: bool,
    keep_embeddings: bool,
    batch_size: int = 65536,
    runtime: str = "auto",
    precision: str = "fp32",
) -> tuple[dict[str, np.ndarray], np.ndarray | None, float]:
    """Each plan's ``(h*w,)`` uint8 layers for a DN composite ``(T, 10, h, w)`` on a CPU, a part
    of ``CPU_PART`` pixels at a time: besides the composite only one part's series and
    embeddings are held, not the whole series (as large as the composite itself). Returns the
    layers, the float32 embeddings with ``keep_embeddings`` (NaN rows where no month), and the
    seconds spent scoring (the classify stage)."""
    months, bands, h, w = composite.shape
    grid = composite.reshape(months, bands, h * w)
    layers: dict[str, np.ndarray] = {}
    kept = np.empty((h * w, model.config.dim), np.float32) if keep_embeddings else None
    scoring = 0.0
    for start in range(0, h * w, CPU_PART):
        part = slice(start, start + CPU_PART)
        series, present = _series(grid[:, :, part], model.conventions)
        embeddings = embed_series(
            model, series, present, batch_size=batch_size, runtime=runtime, precision=precision
        )
        if kept is not None:
            kept[part] = embeddings
        begin = time.perf_counter()
        for plan in plans:
            for name, values in plan.score(embeddings, confidence).items():
                layers.setdefault(name, np.empty(h * w, np.uint8))[part] = values
        scoring += time.perf_counter() - begin
    return layers, kept, scoring


def embed_series(
    model: TimeSenCLIPEncoder,
    series: np.ndarray,
    present: np.ndarray,
    *,
    batch_size: int = 65536,
    runtime: str = "auto",
    precision: str = "fp32",
) -> np.ndarray:
    """Embed ``(P, 12, 10)`` normalised series into ``(P, D)`` float32; NaN rows where no month.

    Only pixels with at least one month go through the encoder (see ``encoder.inference.embed``
    for batch sizes, runtimes and precisions).
    """
    out = np.full((series.shape[0], model.config.dim), np.nan, dtype=np.float32)
    rows = np.flatnonzero(present.any(axis=1))
    # A part at a time: the rows taken are a copy, kept small.
    for start in range(0, len(rows), _ROWS_AT_ONCE):
        part = rows[start : start + _ROWS_AT_ONCE]
        out[part] = embed(
            model,
            torch.from_numpy(series[part]),
            torch.from_numpy(present[part]),
            batch_size=batch_size,
            runtime=runtime,
            precision=precision,
        ).numpy()
    return out


def score_series(
    model: TimeSenCLIPEncoder,
    series: np.ndarray,
    present: np.ndarray,
    plans: Sequence[Plan],
    *,
    confidence: bool,
    keep_embeddings: bool,
    batch_size: int | None = None,
    runtime: str = "auto",
    precision: str = "fp32",
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Each plan's ``(P,)`` uint8 layers for ``(P, T, 10)`` series, scored where the model runs
    (``encoder.inference.embed_scores``), and the float16 embeddings with ``keep_embeddings``
    (NaN rows where no month). Pixels with no month get each layer's nodata value."""
    device = next(model.parameters()).device
    rows = np.flatnonzero(present.any(axis=1))
    scorers = [plan.scorer(confidence, device) for plan in plans]
    layers = {
        name: np.full(series.shape[0], nodata, np.uint8)
        for plan in plans
        for name, nodata in plan.layers(confidence).items()
    }
    embeddings = (
        np.full((series.shape[0], model.config.dim), np.nan, np.float16)
        if keep_embeddings
        else None
    )
    if not len(rows):  # no pixel with a month: every layer stays nodata
        return layers, embeddings
    found, kept = embed_scores(
        model,
        series,
        present,
        scorers,
        rows=rows,
        keep_embeddings=keep_embeddings,
        batch_size=batch_size,
        runtime=runtime,
        precision=precision,
    )
    for name, values in found.items():
        layers[name][rows] = values
    if embeddings is not None:
        embeddings[rows] = kept
    return layers, embeddings
