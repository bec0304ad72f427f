"""Medians over a short time axis: a sorting network on whole rows, no sort per pixel.

A month of Sentinel-2 holds a handful to a few dozen observations per pixel, too few for
``np.sort`` or ``np.partition`` along that axis to be anything but per-pixel overhead. Here the
observations of one band are ``(n, pixels)`` rows; Batcher's odd-even merge network compares
whole rows with ``np.minimum`` / ``np.maximum`` (SIMD over pixels, in the data's own dtype:
uint16 for digital numbers), pruned to the comparators the lower half of the ranks depends on.

An invalid observation holds a value that sorts after every valid one, so the lower half of the
ranks, the only ones a median reads, is all the network must sort; each pixel's median is then
picked at the ranks its own count of valid values gives.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# Rows of a block fit a core's cache with room to spare: whole-row calls stay memory-bound rather
# than Python-bound (a call costs about a microsecond, so a block holds tens of thousands of
# pixels).
_BLOCK_BYTES = 1 << 21


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
    n, shape = len(values), values.shape[1:]
    pixels = math.prod(shape)
    dtype = np.result_type(values.dtype, np.float32)
    out = np.empty(shape, dtype) if out is None else out
    flat_out = out.reshape(pixels)  # a view: ``out`` is C-contiguous
    if n == 0 or pixels == 0:
        flat_out[...] = np.nan
        return out
    rows, bad = values.reshape(n, pixels), bad.reshape(n, pixels)
    ranks = n // 2 + 1
    comparators = network(n, ranks)
    block = min(pixels, max(4096, _BLOCK_BYTES // ((n + 1) * rows.itemsize)))
    buffer = np.empty((n + 1, block), rows.dtype)
    flat = buffer.reshape(-1)
    columns = np.arange(block, dtype=np.intp)
    for start in range(0, pixels, block):
        stop = min(pixels, start + block)
        width = stop - start
        rows_of = [buffer[i, :width] for i in range(n + 1)]
        _marked(buffer[:n, :width], rows[:, start:stop], bad[:, start:stop])
        # wire -> buffer row; the spare row n takes each minimum, so no comparator copies.
        wire = list(range(n + 1))
        for a, b, keep_min, keep_max in comparators:
            low, high = rows_of[wire[a]], rows_of[wire[b]]
            if keep_min and keep_max:
                np.minimum(low, high, out=rows_of[wire[n]])
                np.maximum(low, high, out=high)
                wire[a], wire[n] = wire[n], wire[a]
            elif keep_min:
                np.minimum(low, high, out=low)
            else:
                np.maximum(low, high, out=high)
        # Each count's middle ranks, as offsets in the flat buffer: one ``take`` picks them all.
        valid = n - bad[:, start:stop].sum(axis=0, dtype=np.intp)
        starts = np.array(wire[:ranks], np.intp) * block
        at = columns[:width]
        result = flat_out[start:stop]
        result[...] = flat.take(starts.take(np.maximum(valid, 1) - 1 >> 1) + at)
        if not lower:
            result += flat.take(starts.take(valid >> 1) + at)
            result /= dtype.type(2)
        result[valid == 0] = np.nan
    return out


def _marked(rows: np.ndarray, values: np.ndarray, bad: np.ndarray) -> None:
    """``values`` into ``rows``, with the value that sorts after every other where ``bad``."""
    if rows.dtype.kind == "u":
        np.bitwise_or(
            values, np.multiply(bad, np.iinfo(rows.dtype).max, dtype=rows.dtype), out=rows
        )
    else:
        np.copyto(rows, values)
        rows[bad] = np.inf
