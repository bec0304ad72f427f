"""Batched inference with the encoder: the one place that sizes batches and picks precision."""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import Tensor

from encoder.model import TimeSenCLIPEncoder

# At the published size a pixel holds about 250 KB of activations in the forward pass; a CPU gains
# nothing from batches beyond a few thousand pixels, so larger (GPU-sized) batches are cut there
# to keep memory near 0.5 GB per thread instead of many GB.
CPU_BATCH = 2048

# Threads of one process (a Dask worker's tasks) take turns on the GPU: one GPU-sized batch
# already fills it, and several at once would only add memory.
_GPU_LOCK = threading.Lock()


def embed(
    model: TimeSenCLIPEncoder,
    x: Tensor,
    month_mask: Tensor,
    *,
    batch_size: int = 65536,
    bf16: bool = True,
) -> Tensor:
    """``(N, D)`` float32 embeddings of normalised series ``x`` with ``month_mask``, in batches.

    Runs on the model's device under ``torch.inference_mode``; on a GPU in bf16 autocast unless
    ``bf16`` is False; on a CPU in batches of at most ``CPU_BATCH`` whatever ``batch_size`` says.
    """
    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    if not on_gpu:
        batch_size = min(batch_size, CPU_BATCH)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if on_gpu and bf16
        else contextlib.nullcontext()
    )
    parts = []
    with _GPU_LOCK if on_gpu else contextlib.nullcontext(), torch.inference_mode(), autocast:
        for xb, mb in zip(x.split(batch_size), month_mask.split(batch_size), strict=True):
            xb = xb.to(device, non_blocking=True)
            parts.append(model(xb, mb.to(device, non_blocking=True)).float().cpu())
    if not parts:
        return torch.empty(0, model.config.dim)
    return torch.cat(parts)
