"""A window's tokens as they are computed: 10 m bands a value per pixel, 20 m bands a value per
20 m pixel, and the few pixels where a 20 m band's median is their own.

Kept so, a window's tokens take a little over half the memory and disk of the same tokens on
the 10 m grid; ``full`` puts them on the grid, for the whole window or any part of it (reading
only that part where the arrays are memory-mapped files).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.conventions import BANDS
from pipeline.cube.reader import COARSE, FINE
from pipeline.search.items import SCL

FINE_AT = [BANDS.index(band) for band in FINE]
COARSE_BANDS = [band for band in COARSE if band != SCL]
COARSE_AT = [BANDS.index(band) for band in COARSE_BANDS]
_PARTS = ("fine", "coarse", "exception_token", "exception_rows", "exception_cols", "exceptions")


@dataclass(frozen=True)
class Tokens:
    """``(tokens, 4, h, w)`` 10 m bands (``FINE``), ``(tokens, 6, h/factor, w/factor)`` 20 m
    bands, float32, NaN where a token has no valid observation; ``exceptions`` ``(6, n)``: the
    20 m bands of token ``exception_token`` at pixel (``exception_rows``, ``exception_cols``)."""

    fine: np.ndarray
    coarse: np.ndarray
    exception_token: np.ndarray
    exception_rows: np.ndarray
    exception_cols: np.ndarray
    exceptions: np.ndarray

    @property
    def factor(self) -> int:
        return self.fine.shape[-1] // self.coarse.shape[-1]

    def full(self, rows: slice, cols: slice) -> np.ndarray:
        """``(tokens, 10, rows, cols)`` on the grid, for pixels ``rows`` x ``cols`` of the
        window (slices with start and stop)."""
        k = self.factor
        height, width = rows.stop - rows.start, cols.stop - cols.start
        out = np.empty((len(self.fine), len(BANDS), height, width), np.float32)
        out[:, FINE_AT] = self.fine[:, :, rows, cols]
        # The 20 m pixels covering the part, spread over their k x k pixels, then trimmed.
        top, left = rows.start // k, cols.start // k
        coarse = self.coarse[:, :, top : -(-rows.stop // k), left : -(-cols.stop // k)]
        spread = np.repeat(np.repeat(coarse, k, axis=2), k, axis=3)
        r0, c0 = rows.start - top * k, cols.start - left * k
        out[:, COARSE_AT] = spread[:, :, r0 : r0 + height, c0 : c0 + width]
        inside = (
            (self.exception_rows >= rows.start)
            & (self.exception_rows < rows.stop)
            & (self.exception_cols >= cols.start)
            & (self.exception_cols < cols.stop)
        )
        if inside.any():
            at = np.array(COARSE_AT)[:, None]
            out[
                self.exception_token[inside],
                at,
                self.exception_rows[inside] - rows.start,
                self.exception_cols[inside] - cols.start,
            ] = self.exceptions[:, inside]
        return out

    def save(self, folder: Path) -> None:
        """Each array as a ``.npy`` in ``folder``, so a part can be read memory-mapped."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in _PARTS:
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path) -> Tokens:
        """What ``save`` left in ``folder``; the bands memory-mapped."""
        return cls(
            *(load_array(folder / f"{name}.npy", mmap_mode="r") for name in _PARTS[:2]),
            *(load_array(folder / f"{name}.npy") for name in _PARTS[2:]),
        )


# numpy parses a .npy header with ast.literal_eval, and CPython 3.11's parser is not safe in
# threads (gh-106905: "AST constructor recursion depth mismatch"): a worker's chunk tasks load
# one at a time. The memory-mapped data is read later, outside the lock.
_LOAD_LOCK = threading.Lock()


def load_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` of one ``.npy`` file, safe from several threads."""
    with _LOAD_LOCK:
        return np.load(path, mmap_mode=mmap_mode)


def no_exceptions() -> dict[str, np.ndarray]:
    """The exception fields of ``Tokens`` with none."""
    empty = np.zeros(0, np.intp)
    return {
        "exception_token": empty,
        "exception_rows": empty,
        "exception_cols": empty,
        "exceptions": np.zeros((len(COARSE_AT), 0), np.float32),
    }
