"""Sentinel-2 band order and the normalisation the published model was trained with."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from encoder.errors import TimeSenCLIPError

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
# Published constants; the model divides by HIGH (not HIGH - LOW), as it was trained.
LOW = (67.0, 122.0, 93.27, 158.5, 160.77, 174.27, 162.27, 149.0, 84.5, 66.27)
HIGH = (2089.0, 2598.45, 3214.5, 3620.45, 4033.61, 4613.0, 4825.45, 4945.72, 5140.84, 4414.45)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def normalize(dn: ArrayT, band_axis: int = -1) -> ArrayT:
    """Map L2A digital numbers (pre-2022 scale, BANDS order) to ``clamp((x - LOW) / HIGH, 0, 1)``.

    Works on numpy arrays and torch tensors; integer input becomes float32. NaN (a missing value)
    stays NaN.
    """
    if dn.ndim == 0 or dn.shape[band_axis] != len(BANDS):
        raise TimeSenCLIPError(
            f"normalize expects {len(BANDS)} bands ({' '.join(BANDS)}) along axis {band_axis}, "
            f"got an array of shape {tuple(dn.shape)}; pass band_axis= to name the band axis."
        )
    shape = [1] * dn.ndim
    shape[band_axis] = len(BANDS)
    if isinstance(dn, torch.Tensor):
        x = dn if dn.is_floating_point() else dn.float()
        low = torch.tensor(LOW, dtype=x.dtype, device=x.device).view(shape)
        high = torch.tensor(HIGH, dtype=x.dtype, device=x.device).view(shape)
        return ((x - low) / high).clamp(0.0, 1.0)  # clamp keeps NaN
    x = np.asarray(dn)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    low = np.asarray(LOW, dtype=x.dtype).reshape(shape)
    high = np.asarray(HIGH, dtype=x.dtype).reshape(shape)
    return np.clip((x - low) / high, 0.0, 1.0)  # clip keeps NaN
