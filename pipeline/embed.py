"""Per-pixel embedding of monthly composites with the TimeSenCLIP encoder."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading

import numpy as np
import torch

from encoder import TimeSenCLIPEncoder, load_encoder, normalize

log = logging.getLogger(__name__)

# At the published size a pixel holds about 250 KB of activations in the forward pass; a CPU gains
# nothing from batches beyond a few thousand pixels, so larger (GPU-sized) batches are cut there
# to keep a worker's memory near 0.5 GB per thread instead of many GB.
CPU_BATCH = 2048

# A Dask worker runs several tasks in threads: they share one model, and on a GPU they take turns,
# since one GPU-sized batch already fills the device and several would only add memory.
_LOAD_LOCK = threading.Lock()
_GPU_LOCK = threading.Lock()


def cached_encoder(source: str, device: str) -> TimeSenCLIPEncoder:
    """The encoder for ``source`` on ``device``, loaded once per process (one per Dask worker)."""
    with _LOAD_LOCK:
        return _load_encoder(source, device)


@functools.lru_cache(maxsize=2)
def _load_encoder(source: str, device: str) -> TimeSenCLIPEncoder:
    log.info("loading encoder %s on %s", source, device)
    return load_encoder(source, map_location=device).eval()


def pixel_series(composite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a DN composite ``(12, 10, h, w)`` into normalised series ``(h*w, 12, 10)``.

    Returns the series and the month mask ``(h*w, 12)``: a month is present where all ten bands
    have a value, so months without a valid observation are left out, not invented.
    """
    months, bands, h, w = composite.shape
    series = np.ascontiguousarray(composite.reshape(months, bands, h * w).transpose(2, 0, 1))
    present = np.isfinite(series).all(axis=2)
    return normalize(series.astype(np.float32, copy=False)), present


def embed_series(
    model: TimeSenCLIPEncoder,
    series: np.ndarray,
    present: np.ndarray,
    *,
    batch_size: int = 65536,
) -> np.ndarray:
    """Embed ``(P, 12, 10)`` normalised series into ``(P, D)`` float32; NaN rows where no month.

    On a CPU the batch is at most ``CPU_BATCH`` pixels, whatever ``batch_size`` says.
    """
    device = next(model.parameters()).device
    if device.type == "cpu":
        batch_size = min(batch_size, CPU_BATCH)
    out = np.full((series.shape[0], model.config.dim), np.nan, dtype=np.float32)
    rows = np.flatnonzero(present.any(axis=1))
    on_gpu = device.type == "cuda"
    # bf16 autocast only where it pays off and is exact enough: on a GPU.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    with _GPU_LOCK if on_gpu else contextlib.nullcontext(), torch.inference_mode(), autocast:
        for start in range(0, rows.size, batch_size):
            idx = rows[start : start + batch_size]
            x = torch.from_numpy(series[idx]).to(device, non_blocking=True)
            mask = torch.from_numpy(present[idx]).to(device, non_blocking=True)
            out[idx] = model(x, mask).float().cpu().numpy()
    return out
