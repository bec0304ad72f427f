"""Batched inference with the encoder: the one place that sizes batches and picks the runtime.

``embed`` returns float32 embeddings on the host, on any device and runtime. ``embed_scores``
is the device-side path for mapping: each batch is embedded and scored where the model is, and
only the small results (uint8 layers, float16 embeddings when kept) come back, through pinned
buffers and asynchronous copies, with one synchronisation at the end instead of one per batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from encoder.model import TimeSenCLIPEncoder, position_rows
from encoder.runtime import onnx_session, run_session, select_runtime
from encoder.static import StaticEncoder

# At the published size a pixel holds about 250 KB of activations in the forward pass; a CPU gains
# nothing from batches beyond a few thousand pixels, so larger (GPU-sized) batches are cut there
# to keep memory near 0.5 GB per thread instead of many GB.
CPU_BATCH = 2048
# GPU batches take at most this share of the free memory (activations, at bf16 or float32).
GPU_MEMORY_SHARE = 0.5
ACTIVATION_BYTES = 250_000  # per pixel, float32 (see CPU_BATCH)
# Pixels of one month pattern below which they go with the rest through the masked path: a
# small unmasked batch costs more in kernel launches than the mask costs.
MIN_GROUP = 4096

# Threads of one process (a Dask worker's tasks) take turns on the GPU: one GPU-sized batch
# already fills it, and several at once would only add memory.
_GPU_LOCK = threading.Lock()

Scorer = Callable[[Tensor], dict[str, Tensor]]
_EMBEDDINGS = "\0embeddings"  # the kept embeddings among the layers copied back


def model_device(model: TimeSenCLIPEncoder) -> torch.device:
    return next(model.parameters()).device


def gpu_batch(device: torch.device, precision: str) -> int:
    """Pixels per batch that fit ``GPU_MEMORY_SHARE`` of the device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    per_pixel = ACTIVATION_BYTES // (2 if precision == "bf16" else 1)
    return max(1024, int(free * GPU_MEMORY_SHARE) // per_pixel // 1024 * 1024)


def forward_fn(
    model: TimeSenCLIPEncoder, tokens: int, runtime: str, precision: str
) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(x, month_mask) -> (n, D)`` on the model's device in the runtime and precision asked
    (``encoder.runtime.select_runtime``); call it under ``torch.inference_mode``."""
    device = model_device(model)
    if select_runtime(runtime, precision, device) == "onnx":
        session = onnx_session(model, tokens)
        return lambda x, mask: run_session(session, x, mask)
    return lambda x, mask: model(x, mask, precision)


def embed(
    model: TimeSenCLIPEncoder,
    x: Tensor,
    month_mask: Tensor,
    *,
    batch_size: int = 65536,
    runtime: str = "auto",
    precision: str = "fp32",
) -> Tensor:
    """``(N, D)`` float32 embeddings of normalised series ``x`` with ``month_mask``, in batches.

    Runs on the model's device under ``torch.inference_mode`` in ``runtime`` (auto, torch, onnx)
    and ``precision`` (fp32, or bf16 when asked: nothing lowers precision on its own);
    on a CPU in batches of at most ``CPU_BATCH`` whatever ``batch_size`` says.
    """
    device = model_device(model)
    on_gpu = device.type == "cuda"
    if not on_gpu:
        batch_size = min(batch_size, CPU_BATCH)
    if not len(x):  # nothing to run (an ONNX graph cannot reshape an empty batch)
        return torch.empty(0, model.config.dim)
    parts = []
    with _GPU_LOCK if on_gpu else contextlib.nullcontext(), torch.inference_mode():
        forward = forward_fn(model, x.shape[1], runtime, precision)
        for xb, mb in zip(x.split(batch_size), month_mask.split(batch_size), strict=True):
            xb = xb.to(device, non_blocking=True)
            parts.append(forward(xb, mb.to(device, non_blocking=True)).float().cpu())
    return torch.cat(parts)


def month_groups(
    month_mask: np.ndarray, min_group: int = MIN_GROUP
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``(pixel indices, months present)`` per month pattern with at least ``min_group``
    pixels, largest first, then ``(the other pixels, None)``: those run with the mask."""
    # Each pattern as one integer, the first month its highest bit, so integers sort as the
    # rows would: one sort of integers, many times quicker than sorting rows.
    bits = 1 << np.arange(month_mask.shape[1] - 1, -1, -1, dtype=np.int64)
    codes = month_mask @ bits
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=-1))
    patterns = (ordered[starts, None] & bits) > 0
    groups = zip(patterns, np.split(order, starts[1:]), strict=True)
    big, rest = [], []
    for pattern, pixels in groups:
        (big if len(pixels) >= min_group and pattern.any() else rest).append((pixels, pattern))
    big.sort(key=lambda g: len(g[0]), reverse=True)
    if rest:
        big.append((np.sort(np.concatenate([p for p, _ in rest])), None))
    return big


def embed_pattern(
    model: TimeSenCLIPEncoder, x: Tensor, keep: Tensor, precision: str = "fp32"
) -> Tensor:
    """Embeddings of pixels ``x`` (n, T, bands) that all have the same months present, the
    indices ``keep`` (on x's device): only those tokens go in, with their own positions, and no
    mask, so SDPA may take its flash or memory-efficient kernel and nothing waits on the host.
    Equal to ``model(x, mask)`` up to float rounding."""
    rows, lone = position_rows(
        model.time_pos_encoding, x.shape[1], model.conventions.single_token_position
    )
    pos = lone if len(keep) == 1 else rows[:, keep]
    tokens = model.embed_spectral(x[:, keep]) + pos
    return model.encode_tokens(tokens, None, precision)


def embed_scores(
    model: TimeSenCLIPEncoder,
    x: np.ndarray,
    month_mask: np.ndarray,
    scorers: Sequence[Scorer],
    *,
    keep_embeddings: bool = False,
    batch_size: int | None = None,
    runtime: str = "auto",
    precision: str = "fp32",
    rows: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Embed ``x`` (N, T, bands) and score each batch where the model runs.

    Every scorer maps ``(n, D)`` float32 embeddings to named ``(n,)`` uint8 tensors; returns
    those layers ``(N,)`` and, with ``keep_embeddings``, ``(N, D)`` float16 embeddings; given
    ``rows`` (indices into ``x``), those rows only, in that order. On a
    GPU, pixels are grouped by month pattern (``month_groups``) so common patterns run unmasked,
    batches are sized from free memory, and copies overlap compute. On a CPU it is ``embed``
    followed by the scorers.
    """
    device = model_device(model)
    if device.type != "cuda":
        if rows is not None:
            x, month_mask = x[rows], month_mask[rows]
        emb = embed(
            model,
            torch.from_numpy(x),
            torch.from_numpy(month_mask),
            runtime=runtime,
            precision=precision,
        )
        layers: dict[str, np.ndarray] = {}
        for scorer in scorers:
            layers.update({k: v.numpy() for k, v in scorer(emb).items()})
        kept = emb.to(torch.float16).numpy() if keep_embeddings else None
        return layers, kept
    select_runtime(runtime, precision, device)  # a GPU runs torch: say so if onnx was asked
    with _GPU_LOCK:
        return device_embed_scores(
            model,
            x,
            month_mask,
            scorers,
            keep_embeddings,
            batch_size or gpu_batch(device, precision),
            precision,
            rows,
        )


def _batches(
    groups: list[tuple[np.ndarray, np.ndarray | None]], batch: int
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """``(start, stop, pattern)`` slices of the pixels in group order (pattern None: masked)."""
    start = 0
    for pixels, pattern in groups:
        for s in range(start, start + len(pixels), batch):
            yield s, min(s + batch, start + len(pixels)), pattern
        start += len(pixels)


@torch.inference_mode()
def device_embed_scores(
    model: TimeSenCLIPEncoder,
    x: np.ndarray,
    month_mask: np.ndarray,
    scorers: Sequence[Scorer],
    keep_embeddings: bool,
    batch: int,
    precision: str,
    rows: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``embed_scores`` on the model's device in torch: grouped by month pattern, batches of
    ``batch``, and on a GPU pinned buffers, a copy stream and one synchronisation at the end
    (on a CPU the same steps, plainly: that is how the tests check them)."""
    device = model_device(model)
    cuda = device.type == "cuda"
    groups = month_groups(month_mask if rows is None else month_mask[rows])
    order = np.concatenate([p for p, _ in groups]) if groups else np.zeros(0, np.int64)
    # Inputs in group order, pinned, so each batch's copy is asynchronous and a plain slice;
    # ``rows`` and the order are taken in one gather: a pass over the series costs as much as
    # the rest of the work around the model.
    taken = order if rows is None else rows[order]
    xs, ms = (_pinned(torch.from_numpy(a.take(taken, 0)), cuda) for a in (x, month_mask))
    copy = torch.cuda.Stream(device) if cuda else None
    compute = torch.cuda.current_stream(device) if cuda else None
    host: dict[str, Tensor] = {}
    if keep_embeddings:
        host[_EMBEDDINGS] = _pinned(
            torch.empty((len(order), model.config.dim), dtype=torch.float16), cuda
        )
    # The masked rest runs the export-ready forward: no data-dependent branch, so no host sync.
    static = StaticEncoder(model, x.shape[1], precision)
    months = {}  # pattern -> its months' indices on the device, copied once
    for start, stop, pattern in _batches(groups, batch):
        # The next batch's input is copied on its own stream while this one computes.
        with torch.cuda.stream(copy) if cuda else contextlib.nullcontext():
            xb = xs[start:stop].to(device, non_blocking=True)
            mb = ms[start:stop].to(device, non_blocking=True)
        if cuda:
            compute.wait_stream(copy)
            xb.record_stream(compute)
            mb.record_stream(compute)
        if pattern is None:
            emb = static(xb.flatten(2), mb)
        else:
            key = pattern.tobytes()
            if key not in months:
                months[key] = torch.from_numpy(np.flatnonzero(pattern)).to(device)
            emb = embed_pattern(model, xb, months[key], precision)
        outputs = {}
        for scorer in scorers:
            outputs.update(scorer(emb))
        if keep_embeddings:
            outputs[_EMBEDDINGS] = emb.to(torch.float16)
        for name, values in outputs.items():
            if name not in host:
                host[name] = _pinned(torch.empty(len(order), dtype=values.dtype), cuda)
            # Queued after the batch on the compute stream: no wait here, and the allocator
            # reuses the device memory only after the copy.
            host[name][start:stop].copy_(values, non_blocking=True)
    if cuda:
        compute.synchronize()  # the one wait, for all copies back
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    layers = {name: t.numpy()[inverse] for name, t in host.items()}
    return layers, layers.pop(_EMBEDDINGS, None)


def _pinned(t: Tensor, cuda: bool) -> Tensor:
    return t.pin_memory() if cuda else t
