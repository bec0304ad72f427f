"""The compiled loop of ``pipeline.cube.median``: marking, sorting network and pick, for a block
of pixels at a time, without the GIL.

Apart from ``median.py`` because importing numba and loading the compiled kernel takes about a
second: a process that never takes a median (the command that plans a run) never pays it, and a
worker loads it as it starts (``pipeline.run.worker_start``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

# Pixels a block: its ``(n, pixels)`` rows stay in a core's L2 cache for a few dozen scenes.
_BLOCK = 2048


def _mark(value, bad, top):
    """``top`` where ``bad``, else ``value`` (compiled per dtype below)."""


@overload(_mark, inline="always")
def _mark_for(value, bad, top):
    if isinstance(value, types.Integer):
        # A multiply and an OR vectorise; a select on the flag does not, for 16-bit integers.
        return lambda value, bad, top: value | (bad * top)
    return lambda value, bad, top: top if bad else value


# Compiled (or loaded from numba's cache) at import, for the dtypes medians are taken in:
# digital numbers, and float32/float64 values (resampled, shifted, or NaN-marked). Rows come as
# one contiguous run of memory and a row stride (``median.rows_in_place``): a strided 2-D array
# would not let the loops vectorise.
_SIGNATURES = [
    f"void({value}[::1], intp, uint8[::1], intp, intp, intp[:, ::1], {value}, boolean, {out}[::1])"
    for value, out in (("uint16", "float32"), ("float32", "float32"), ("float64", "float64"))
]


@numba.njit(_SIGNATURES, nogil=True, cache=True)
def network_median(
    values, values_stride, bad, bad_stride, n, comparators, top, lower, out
):  # pragma: no cover (compiled)
    """Into ``out`` (its length: the pixels) the median over ``n`` rows of ``values`` (row
    ``i`` at ``i * values_stride``) where ``bad`` (uint8, rows at ``bad_stride``) is 0:
    ``comparators`` ``(a, b, keep_min, keep_max)`` (``median.network``) put the lower half of
    the ranks in place after each invalid value is set to ``top``, which sorts last. The mean
    of the two middle values, or the lower one with ``lower``; NaN where none is valid."""
    pixels = len(out)
    buffer = np.empty((n, _BLOCK), values.dtype)
    valid = np.empty(_BLOCK, np.intp)
    for start in range(0, pixels, _BLOCK):
        width = min(_BLOCK, pixels - start)
        valid[:width] = n
        for i in range(n):
            at, flags_at, row = i * values_stride + start, i * bad_stride + start, buffer[i]
            own, flags = values[at : at + width], bad[flags_at : flags_at + width]
            for p in range(width):
                row[p] = _mark(own[p], flags[p], top)
                valid[p] -= flags[p]
        for c in range(comparators.shape[0]):
            low, high = buffer[comparators[c, 0]], buffer[comparators[c, 1]]
            if comparators[c, 2] and comparators[c, 3]:
                for p in range(width):
                    a, b = low[p], high[p]
                    low[p], high[p] = min(a, b), max(a, b)
            elif comparators[c, 2]:
                for p in range(width):
                    low[p] = min(low[p], high[p])
            else:
                for p in range(width):
                    high[p] = max(low[p], high[p])
        for p in range(width):
            count = valid[p]
            if count == 0:
                out[start + p] = np.nan
                continue
            # Each step stored in ``out``'s dtype, as numpy's float32 arithmetic rounds.
            out[start + p] = buffer[(count - 1) >> 1, p]
            if not lower:
                out[start + p] += buffer[count >> 1, p]
                out[start + p] /= 2
