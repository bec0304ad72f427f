"""A window's scenes to its tokens: which observations count, and their medians.

The rule is the reference composite's: every band on the 10 m grid (20 m bands by nearest), an
observation (a scene at a pixel) counts when SCL and all 10 bands hold data and SCL is not
masked, and a token is the NaN-aware median of its observations. It is computed on digital
numbers as stored (``pipeline.cube.reader.SceneRead``: uint16, 0 = no data), never as masked
float arrays: an invalid observation gets the sentinel value that sorts last, and medians come
from ``pipeline.cube.median``.

The 20 m bands are computed at 20 m wherever that is exactly the same. Their values repeat over
the 2 x 2 grid pixels of a 20 m pixel, so those four pixels share a median unless the 10 m bands
make an observation valid at some of them and not at others (a footprint or no-data edge of a
10 m band that cuts the 20 m pixel). Such pixels are found and computed one by one; the others
take the median of the observations valid at all four.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from encoder.conventions import BANDS
from pipeline.cube.median import median_over_time
from pipeline.cube.reader import FINE, SceneRead, threads_of
from pipeline.cube.tokens import COARSE_BANDS, Tokens, no_exceptions
from pipeline.search.items import SCL
from pipeline.search.sentinel2 import REFERENCE_ZERO_CLASSES


@dataclass(frozen=True)
class Observations:
    """Scenes over a window in time order, as a median needs them: each asset's ``(scenes,
    rows, cols)`` layer (``SceneRead.layers``), the 20 m ones a value per ``factor`` x
    ``factor`` pixels, and each scene's calendar month and offset (digital numbers to subtract,
    ``pipeline.search.harmonize``)."""

    layers: Mapping[str, np.ndarray]
    factor: int
    months: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, read: SceneRead) -> Observations:
        return cls(
            read.layers,
            read.factor,
            np.array([r.month for r in read.used], dtype=np.int8),
            np.array([r.offset for r in read.used], dtype=np.float32),
        )

    def rows(self, strip: slice) -> Observations:
        """The observations of rows ``strip`` of the window (its ends multiples of ``factor``)."""
        k = self.factor
        coarse = slice(strip.start // k, -(-strip.stop // k))
        layers = {
            name: values[:, strip if name in FINE else coarse]
            for name, values in self.layers.items()
        }
        return Observations(layers, k, self.months, self.offsets)

    def spans(self, months: Sequence[int]) -> list[slice]:
        """The scenes of each of ``months`` (contiguous: scenes are in time order)."""
        return [
            slice(
                int(np.searchsorted(self.months, m)), int(np.searchsorted(self.months, m, "right"))
            )
            for m in months
        ]


def masked_tokens(
    obs: Observations,
    blocks: Sequence[Sequence[int]],
    cloud_mask: Sequence[int],
    threads: int = 1,
) -> tuple[Tokens, np.ndarray]:
    """The medians of each block of months' valid observations, a token a block, and
    ``(months, h, w)`` whether each month of the blocks has one, over the read's window.

    Pixels are independent: with ``threads`` > 1 the window is cut in strips of rows, each
    masked and reduced on one of ``threads`` threads (numpy lets go of the GIL in them), so the
    masking runs in parallel too, not only the medians."""
    k = obs.factor
    rows = obs.layers[FINE[0]].shape[1]
    # Twice as many strips as threads evens out strips of unequal work (clouds, edges).
    step = max(k, -(-rows // (2 * threads)) // k * k)
    strips = [slice(top, min(top + step, rows)) for top in range(0, rows, step)]
    if threads <= 1 or len(strips) == 1:
        parts = [_strip_tokens(obs, blocks, cloud_mask, 0)]
    else:
        parts = list(
            threads_of("median", threads).map(
                lambda strip: _strip_tokens(obs.rows(strip), blocks, cloud_mask, strip.start),
                strips,
            )
        )
    fine, coarse, has_data, exceptions = zip(*parts, strict=True)
    # Token by token, each token's strips in order: as one strip of the whole window gives them.
    by_token = sorted((e for part in exceptions for e in part), key=lambda e: e[0])
    tokens = Tokens(
        np.concatenate(fine, axis=2),
        np.concatenate(coarse, axis=2),
        **_together([found for _, found in by_token]),
    )
    return tokens, np.concatenate(has_data, axis=1)


def _strip_tokens(
    obs: Observations, blocks: Sequence[Sequence[int]], cloud_mask: Sequence[int], top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, tuple[np.ndarray, ...]]]]:
    """``masked_tokens`` of the rows of ``obs``, which start at row ``top`` of the window, on
    this thread: 10 m and 20 m medians, has-data, and the exceptions (rows counted in the
    window) of each token that has some."""
    layers, k = obs.layers, obs.factor
    masked = np.zeros(256, bool)
    masked[[0, *cloud_mask]] = True  # SCL 0 is no data, as digital number 0 is for a band
    bad_coarse = _mark_no_data(masked[layers[SCL]], *(layers[b] for b in COARSE_BANDS))
    bad = _mark_no_data(np.zeros(layers[FINE[0]].shape, bool), *(layers[b] for b in FINE))
    _or_spread(bad, bad_coarse, k)
    # An observation counts at a 20 m pixel's median when it is valid at all its four pixels.
    bad_at_coarse = _any_of_blocks(bad, k)
    months = [m for block in blocks for m in block]
    has_data = np.stack([~np.logical_and.reduce(bad[span]) for span in obs.spans(months)])
    fine = np.empty((len(blocks), len(FINE), *bad.shape[1:]), np.float32)
    coarse = np.empty((len(blocks), len(COARSE_BANDS), *bad_coarse.shape[1:]), np.float32)
    exceptions = []
    for t, block in enumerate(blocks):
        spans = obs.spans(block)
        span = slice(spans[0].start, spans[-1].stop)
        if span.start == span.stop:
            fine[t] = coarse[t] = np.nan
            continue
        offsets = obs.offsets[span]
        for i, band in enumerate(FINE):
            _median(layers[band][span], bad[span], offsets, fine[t, i])
        for i, band in enumerate(COARSE_BANDS):
            _median(layers[band][span], bad_at_coarse[span], offsets, coarse[t, i])
        if k > 1:
            exceptions.append((t, _exceptions(t, obs, span, bad, k)))
    return fine, coarse, has_data, [(t, _moved(found, top)) for t, found in exceptions]


def _mark_no_data(bad: np.ndarray, *layers: np.ndarray) -> np.ndarray:
    """``bad``, marked also where any of ``layers`` holds no data (0, or NaN where resampled)."""
    no_data = np.empty_like(bad)
    for values in layers:
        bad |= np.equal(values, 0, out=no_data)
        if values.dtype.kind == "f":
            bad |= np.isnan(values, out=no_data)
    return bad


def reference_tokens(obs: Observations) -> tuple[Tokens, np.ndarray]:
    """The 12 monthly composites by the published training rule, and ``(12, h, w)`` whether
    each month has an observation (``pipeline.cube.temporal.reference_composite``).

    Every band of an observation with SCL 9, 10 or 11 becomes 0 and stays; each band keeps its
    own observations (a scene with no data in one band still counts in the others); a month is
    the lower median of its observations, a month without any the lower median of the year's,
    then 1 is added. Each band is computed at its own resolution: the rule reads nothing across
    bands but SCL, which is at 20 m.
    """
    layers, k = obs.layers, obs.factor
    zero = np.zeros(256, bool)
    zero[list(REFERENCE_ZERO_CLASSES)] = True
    zeroed = {k: zero[layers[SCL]]}  # at the 20 m layers' step, and at 10 m
    if k > 1:
        zeroed[1] = np.repeat(np.repeat(zeroed[k], k, axis=1), k, axis=2)
    spans = obs.spans(range(1, 13))
    fine = np.empty((len(spans), len(FINE), *layers[FINE[0]].shape[1:]), np.float32)
    coarse = np.empty((len(spans), len(COARSE_BANDS), *layers[SCL].shape[1:]), np.float32)
    has_data = np.zeros((len(spans), *fine.shape[2:]), bool)
    for band in BANDS:
        step, out = (1, fine) if band in FINE else (k, coarse)
        at = (FINE if band in FINE else COARSE_BANDS).index(band)
        values = _on_reference_scale(layers[band], obs.offsets, zeroed[step])
        year = _lower_median(values)
        for m, span in enumerate(spans):
            own = _lower_median(values[span])
            out[m, at] = np.where(np.isnan(own), year, own) + np.float32(1)
            if band == BANDS[0]:
                has_data[m] = np.isfinite(values[span]).any(axis=0)
    return Tokens(fine, coarse, **no_exceptions()), has_data


def _lower_median(values: np.ndarray) -> np.ndarray:
    return median_over_time(values, ~np.isfinite(values), lower=True)


def _on_reference_scale(values: np.ndarray, offsets: np.ndarray, zeroed: np.ndarray) -> np.ndarray:
    """float32 values less each scene's offset, 0 where zeroed, NaN where no data."""
    no_data = _mark_no_data(np.zeros(values.shape, bool), values)
    out = values.astype(np.float32) - offsets[:, None, None]
    out[zeroed & ~no_data] = 0
    out[no_data] = np.nan
    return out


def _or_spread(out: np.ndarray, values: np.ndarray, k: int) -> None:
    """``out |= values`` of k x k pixel blocks spread over their pixels: one strided ``|=`` per
    pixel of a block, which lets go of the GIL (``np.repeat`` holds it), so other threads'
    strips go on meanwhile."""
    if k == 1:
        out |= values
        return
    for dy in range(k):
        for dx in range(k):
            out[..., dy::k, dx::k] |= values


def _any_of_blocks(bad: np.ndarray, k: int) -> np.ndarray:
    """Whether an observation is bad at any of the k x k pixels of each block."""
    return _fold(bad, k, np.bitwise_or)


def _all_of_blocks(bad: np.ndarray, k: int) -> np.ndarray:
    return _fold(bad, k, np.bitwise_and)


def _fold(bad: np.ndarray, k: int, combine) -> np.ndarray:
    if k == 1:
        return bad
    rows = bad[..., 0::k, :].copy()
    for dy in range(1, k):
        combine(rows, bad[..., dy::k, :], out=rows)
    out = rows[..., 0::k].copy()
    for dx in range(1, k):
        combine(out, rows[..., dx::k], out=out)
    return out


def _median(
    values: np.ndarray, bad: np.ndarray, offsets: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Median over scenes (axis 0) of ``values`` where not ``bad``, on the pre-2022 scale
    (into ``out`` when given). Digital numbers with one offset stay in their dtype up to the
    median; with several offsets, or resampled, they are brought to the scale first."""
    if values.dtype.kind == "u" and (offsets == offsets[0]).all():
        median = median_over_time(values, bad, out=out)
        median -= offsets[0]
        return median
    shifted = values.astype(np.float32) - offsets.reshape(-1, *[1] * (values.ndim - 1))
    return median_over_time(shifted, bad, out=out)


def _exceptions(
    t: int, obs: Observations, span: slice, bad: np.ndarray, k: int
) -> tuple[np.ndarray, ...]:
    """Token ``t``'s pixels whose 20 m median is not their 20 m pixel's (an observation among
    the scenes of ``span`` is valid at some of its four pixels only): ``(token, rows, cols,
    (6, n) values)``."""
    bad = bad[span]
    mixed = (_any_of_blocks(bad, k) & ~_all_of_blocks(bad, k)).any(axis=0)
    block_rows, block_cols = np.nonzero(mixed)
    dy, dx = np.divmod(np.arange(k * k), k)
    rows = (block_rows[:, None] * k + dy).ravel()
    cols = (block_cols[:, None] * k + dx).ravel()
    values = np.empty((len(COARSE_BANDS), len(rows)), np.float32)
    for i, band in enumerate(COARSE_BANDS):
        spread = obs.layers[band][span][:, block_rows, block_cols].repeat(k * k, axis=1)
        _median(spread, bad[:, rows, cols], obs.offsets[span], out=values[i])
    return np.full(len(rows), t, np.intp), rows, cols, values


def _moved(exceptions: tuple[np.ndarray, ...], top: int) -> tuple[np.ndarray, ...]:
    """``_exceptions`` of a strip whose first row is row ``top`` of its window, in the window."""
    token, rows, cols, values = exceptions
    return token, rows + top, cols, values


def _together(exceptions: list[tuple[np.ndarray, ...]]) -> dict[str, np.ndarray]:
    """The exceptions of every token as ``Tokens`` fields."""
    if not exceptions:
        return no_exceptions()
    token, rows, cols, values = zip(*exceptions, strict=True)
    return {
        "exception_token": np.concatenate(token),
        "exception_rows": np.concatenate(rows),
        "exception_cols": np.concatenate(cols),
        "exceptions": np.concatenate(values, axis=1),
    }
