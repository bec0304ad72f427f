"""Medians over a short time axis: a sorting network on whole rows, no sort per pixel.

A month of Sentinel-2 holds a handful to a few dozen observations per pixel, too few for
``np.sort`` or ``np.partition`` along that axis to be anything but per-pixel overhead. Here the
observations of one band are ``(n, pixels)`` rows; Batcher's odd-even merge network compares
rows a block of pixels at a time (a minimum and a maximum per comparator, SIMD over pixels, in
the data's own dtype: uint16 for digital numbers), pruned to the comparators the lower half of
the ranks depends on. The loop is compiled (``pipeline.cube.median_kernel``, numba) and runs
without the GIL: as numpy calls, a comparator each, it held the GIL for a third of its time
between calls, and two threads' medians beside the readers ran at 1.5 cores, not 2.

An invalid observation holds a value that sorts after every valid one, so the lower half of the
ranks, the only ones a median reads, is all the network must sort; each pixel's median is then
picked at the ranks its own count of valid values gives.
"""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.cache
def network(n: int, ranks: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Comparators ``(a, b, keep_min, keep_max)`` that put ranks ``0 .. ranks-1`` of ``n`` wires
    in place: Batcher's odd-even merge sort, less every comparator no needed rank depends on,
    and less the half of a comparator whose result nothing reads."""
    size = 1 << max(n - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    needed, kept = set(range(ranks)), []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b, a in needed, b in needed))
            needed |= {a, b}
    return tuple(reversed(kept))


def median_over_time(
    values: np.ndarray, bad: np.ndarray, *, lower: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """Median over axis 0 of ``values`` ``(n, ...)`` where not ``bad`` (same shape): ``(...)``.

    The mean of the two middle values for an even count (as ``numpy.nanmedian``), or the lower
    one with ``lower`` (as ``torch.median``); NaN where no value is valid. Float32, or the
    values' float dtype: digital numbers are integers, so the mean is exact. Written into
    ``out`` (C-contiguous) when given.
    """
    # Imported here: the compiled kernel takes about a second to load, which only processes
    # that take medians should pay.
    from pipeline.cube.median_kernel import network_median

    n, shape = len(values), values.shape[1:]
    pixels = math.prod(shape)
    dtype = np.result_type(values.dtype, np.float32)
    out = np.empty(shape, dtype) if out is None else out
    flat_out = out.reshape(pixels)  # a view: ``out`` is C-contiguous
    if n == 0 or pixels == 0:
        flat_out[...] = np.nan
        return out
    if values.dtype not in _KERNEL_DTYPES:
        values = values.astype(dtype)
    top = np.iinfo(values.dtype).max if values.dtype.kind == "u" else np.inf
    network_median(
        *rows_in_place(values.reshape(n, pixels)),
        *rows_in_place(np.asarray(bad, bool).reshape(n, pixels).view(np.uint8)),
        n,
        _comparators(n),
        values.dtype.type(top),
        lower,
        flat_out,
    )
    return out


def rows_in_place(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """``rows`` ``(n, pixels)`` as one contiguous 1-D run of memory and its row stride, in
    items: a view where each row is contiguous (a strip of a window's layers, rows of scenes
    apart), else a copy."""
    n, pixels = rows.shape
    item = rows.itemsize
    contiguous = pixels == 1 or rows.strides[1] == item
    if not contiguous or rows.strides[0] % item or rows.strides[0] < 0:
        rows = np.ascontiguousarray(rows)
    stride = rows.strides[0] // item if n > 1 else pixels
    run = np.lib.stride_tricks.as_strided(rows, ((n - 1) * stride + pixels,), (item,))
    return run, stride


# What the kernel is compiled for (``median_kernel``): others are taken as ``dtype``.
_KERNEL_DTYPES = (np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64))


@functools.cache
def _comparators(n: int) -> np.ndarray:
    """``network(n, n // 2 + 1)`` as the kernel takes it: ``(comparators, 4)`` intp."""
    return np.array(network(n, n // 2 + 1), np.intp).reshape(-1, 4)
