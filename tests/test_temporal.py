"""Seasonal and annual medians of observations, and the reference composite rule, against
independent per-pixel computations."""

import numpy as np
import pytest

from pipeline.cube.temporal import block_medians, lower_nanmedian_time, reference_composite
from timesenclip.common.errors import TimeSenCLIPError

SEASONS = [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)]


@pytest.fixture
def observations():
    """30 observations of 3 bands over a 4x5 patch: random months (none in May), random gaps."""
    rng = np.random.default_rng(0)
    months = rng.choice([m for m in range(1, 13) if m != 5], 30)
    values = rng.integers(0, 4000, (30, 3, 4, 5)).astype(np.float32)
    absent = rng.random((30, 4, 5)) < 0.3  # whole observations absent at a pixel
    values[np.broadcast_to(absent[:, None], values.shape)] = np.nan
    values[:, :, 0, 0] = np.nan  # a pixel with no observation at all
    scl = rng.choice([4, 5, 8, 9, 10, 11, 0], (30, 4, 5)).astype(np.float32)
    return values, months, scl


def test_seasonal_and_annual_medians_are_of_observations(observations):
    values, months, _ = observations
    seasonal = block_medians(values, months, "seasonal")
    annual = block_medians(values, months, "annual")
    monthly = block_medians(values, months, "monthly")
    assert seasonal.shape == (4, 3, 4, 5) and annual.shape == (1, 3, 4, 5)
    assert monthly.shape == (12, 3, 4, 5) and seasonal.dtype == np.float32
    for b in range(3):
        for y in range(4):
            for x in range(5):
                for s, block in enumerate(SEASONS):
                    pixel = values[np.isin(months, block), b, y, x]
                    pixel = pixel[np.isfinite(pixel)]
                    want = np.median(pixel) if len(pixel) else np.nan
                    np.testing.assert_allclose(seasonal[s, b, y, x], want, rtol=1e-6)
                pixel = values[:, b, y, x][np.isfinite(values[:, b, y, x])]
                want = np.median(pixel) if len(pixel) else np.nan
                np.testing.assert_allclose(annual[0, b, y, x], want, rtol=1e-6)
    assert np.isnan(monthly[4]).all()  # May has no observation
    assert np.isnan(seasonal[:, :, 0, 0]).all() and np.isnan(annual[0, :, 0, 0]).all()


def test_a_season_is_not_the_median_of_its_monthly_medians():
    # January 10, 20, 30 (median 20), February 100 (median 100): observations' median 25,
    # monthly medians' median 60.
    values = np.array([10, 20, 30, 100], np.float32).reshape(4, 1, 1, 1)
    months = np.array([1, 1, 1, 2])
    assert block_medians(values, months, "seasonal")[0, 0, 0, 0] == 25.0
    assert block_medians(values, months, "monthly")[:2, 0, 0, 0].tolist() == [20.0, 100.0]


def test_lower_median():
    values = np.array([[4.0, np.nan], [1.0, np.nan], [3.0, np.nan], [2.0, np.nan]])
    np.testing.assert_array_equal(lower_nanmedian_time(values), [2.0, np.nan])
    assert lower_nanmedian_time(np.array([[5.0], [1.0], [9.0]]))[0] == 5.0


def reference_by_hand(values, months, scl):
    """The reference rule written out per pixel: SCL 9/10/11 -> 0, lower median per month, empty
    month -> lower median of the year, + 1."""
    t, bands, h, w = values.shape
    out = np.full((12, bands, h, w), np.nan)
    for b in range(bands):
        for y in range(h):
            for x in range(w):
                obs = [
                    (months[i], 0.0 if scl[i, y, x] in (9, 10, 11) else float(values[i, b, y, x]))
                    for i in range(t)
                    if np.isfinite(values[i, b, y, x])
                ]
                if not obs:
                    continue
                year = sorted(v for _, v in obs)
                for m in range(1, 13):
                    own = sorted(v for month, v in obs if month == m) or year
                    out[m - 1, b, y, x] = own[(len(own) - 1) // 2] + 1
    return out


def test_reference_composite_equals_the_rule_by_hand(observations):
    values, months, scl = observations
    out = reference_composite(values, months, scl)
    assert out.shape == (12, 3, 4, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out, reference_by_hand(values, months, scl))
    assert np.isnan(out[:, :, 0, 0]).all()
    assert np.isfinite(out[4, :, 1:, :]).all()  # May takes the year's median
    assert out[np.isfinite(out)].min() >= 1.0  # zeroed observations come out as 1


def test_bad_shapes_and_months(observations):
    values, months, scl = observations
    with pytest.raises(TimeSenCLIPError, match=r"months must be 1\.\.12"):
        block_medians(values, np.zeros(30, int), "seasonal")
    with pytest.raises(TimeSenCLIPError, match=r"months \(time,\)"):
        block_medians(values, months[:5], "annual")
    with pytest.raises(TimeSenCLIPError, match="temporal 'weekly' is unknown"):
        block_medians(values, months, "weekly")
    with pytest.raises(TimeSenCLIPError, match=r"scl must be \(time, y, x\)"):
        reference_composite(values, months, scl[:, :2])
