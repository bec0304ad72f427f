"""Normalisation with the published constants, on numpy arrays and torch tensors."""

import numpy as np
import pytest
import torch

from encoder.preprocess import BANDS, HIGH, LOW, normalize
from timesenclip.common.errors import TimeSenCLIPError


def test_band_order_and_constants():
    assert BANDS == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert LOW[0] == 67.0 and LOW[2] == 93.27 and LOW[-1] == 66.27
    assert HIGH[0] == 2089.0 and HIGH[6] == 4825.45 and HIGH[-1] == 4414.45
    assert len(LOW) == len(HIGH) == 10


def test_numpy_values_clamp_and_nan():
    low, high = np.array(LOW), np.array(HIGH)
    dn = np.stack([low, low + high / 2, low + high, low + 2 * high, low - 50, np.full(10, np.nan)])
    out = normalize(dn)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(out[1], 0.5, atol=1e-12)  # divides by HIGH, not HIGH - LOW
    np.testing.assert_allclose(out[2:5], [[1.0] * 10, [1.0] * 10, [0.0] * 10])
    assert np.isnan(out[5]).all()


def test_integer_input_becomes_float32():
    dn = np.full((3, 12, 10), 1067, dtype=np.uint16)
    out = normalize(dn)
    assert out.dtype == np.float32 and out.shape == (3, 12, 10)
    np.testing.assert_allclose(out[0, 0, 0], 1000 / 2089, rtol=1e-6)


def test_torch_matches_numpy_and_keeps_nan():
    rng = np.random.default_rng(0)
    dn = rng.uniform(-500, 9000, size=(5, 12, 10)).astype(np.float32)
    dn[0, 3] = np.nan
    out = normalize(torch.from_numpy(dn))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), normalize(dn), rtol=1e-6, equal_nan=True)
    assert torch.isnan(out[0, 3]).all()
    assert normalize(torch.full((2, 10), 500, dtype=torch.int16)).dtype == torch.float32


def test_band_axis_and_wrong_band_count():
    cube = np.random.default_rng(1).uniform(0, 5000, size=(10, 4, 3))
    np.testing.assert_allclose(
        normalize(cube, band_axis=0), normalize(cube.transpose(1, 2, 0)).transpose(2, 0, 1)
    )
    with pytest.raises(TimeSenCLIPError, match=r"shape \(4, 3, 10\)"):
        normalize(cube.transpose(1, 2, 0), band_axis=0)
