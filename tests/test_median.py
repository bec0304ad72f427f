"""The compiled medians (``pipeline.cube.median``) against numpy's, bit for bit."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from pipeline.cube.median import median_over_time, rows_in_place


def _reference(values: np.ndarray, bad: np.ndarray, lower: bool = False) -> np.ndarray:
    """numpy's NaN-aware median (or the lower middle value), in float32 as the composite."""
    marked = np.where(bad, np.nan, values.astype(np.float32))
    if not lower:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels with no valid value
            return np.nanmedian(marked, axis=0)
    ordered = np.sort(marked, axis=0)  # NaN last
    count = (~bad).sum(axis=0)
    picked = np.take_along_axis(ordered, np.maximum(count - 1, 0)[None] >> 1, axis=0)[0]
    return np.where(count == 0, np.float32(np.nan), picked)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 25, 33, 48])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_medians_equal_numpys_for_every_count_of_valid_values(n, dtype):
    rng = np.random.default_rng(n)
    shape = (n, 37, 91)  # not a multiple of the kernel's block of pixels
    values = rng.integers(1, 12000, shape).astype(dtype)
    if dtype == np.float32:
        values -= np.float32(1000.25)  # negative values and fractions sort as numbers
    values[:, 0, :5] = 65535 if dtype == np.uint16 else np.inf  # valid values at the sentinel
    bad = rng.random(shape) < rng.random((1, *shape[1:]))  # from none to all bad per pixel
    bad[:, 1, :] = True  # pixels without a valid value
    for lower in (False, True):
        got = median_over_time(values, bad, lower=lower)
        assert got.dtype == np.float32 and got.shape == shape[1:]
        np.testing.assert_array_equal(_bits(got), _bits(_reference(values, bad, lower)))


def test_a_strip_of_a_window_is_read_in_place_and_gives_the_same_medians():
    rng = np.random.default_rng(1)
    window = rng.integers(1, 9000, (12, 64, 40)).astype(np.uint16)
    bad = rng.random(window.shape) < 0.4
    strip = window[:, 16:32]  # rows of scenes apart in memory, as masked_tokens' strips
    run, stride = rows_in_place(strip.reshape(12, -1))
    assert np.shares_memory(run, window) and stride == 64 * 40
    assert np.array_equal(run[stride : stride + 16 * 40], window[1, 16:32].ravel())
    out = np.empty((16, 40), np.float32)
    median_over_time(strip, bad[:, 16:32], out=out)
    np.testing.assert_array_equal(_bits(out), _bits(_reference(strip, bad[:, 16:32])))


def test_other_layouts_and_dtypes_are_taken_as_floats():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 200, (5, 30, 20)).astype(np.uint8)
    bad = rng.random(values.shape) < 0.3
    got = median_over_time(values.transpose(0, 2, 1), bad.transpose(0, 2, 1))  # not in place
    want = _reference(values.transpose(0, 2, 1), bad.transpose(0, 2, 1))
    np.testing.assert_array_equal(_bits(got), _bits(want))
    doubles = rng.normal(size=(6, 50))
    nan = ~np.isfinite(np.where(rng.random(doubles.shape) < 0.3, np.nan, doubles))
    got = median_over_time(doubles, nan)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.nanmedian(np.where(nan, np.nan, doubles), axis=0))


def test_threads_take_medians_at_once_with_the_same_results():
    rng = np.random.default_rng(3)
    values = rng.integers(1, 12000, (25, 256, 256)).astype(np.uint16)
    bad = rng.random(values.shape) < 0.3
    want = median_over_time(values, bad)
    results: list[np.ndarray] = []

    def take() -> None:
        results.append(median_over_time(values, bad))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for got in results:
        np.testing.assert_array_equal(_bits(got), _bits(want))
