"""Sentinel-2 digital numbers to model input, by a checkpoint's :class:`Conventions`."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from encoder.conventions import BANDS as BANDS  # re-exported: callers import them here
from encoder.conventions import HIGH as HIGH
from encoder.conventions import LOW as LOW
from encoder.conventions import Conventions
from timesenclip.common.errors import TimeSenCLIPError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
DEFAULT_CONVENTIONS = Conventions()


def normalize(dn: ArrayT, band_axis: int = -1, conventions: Conventions | None = None) -> ArrayT:
    """Model input from L2A digital numbers (pre-2022 scale) given in :data:`BANDS` order.

    The bands are reordered into ``conventions.band_order`` (default: the published conventions,
    which keep BANDS order) and mapped to ``clamp((x - low) / high, 0, 1)`` with the conventions'
    constants. Works on numpy arrays and torch tensors; integer input becomes float32. NaN (a
    missing value) stays NaN.
    """
    conv = conventions or DEFAULT_CONVENTIONS
    if dn.ndim == 0 or dn.shape[band_axis] != len(BANDS):
        raise TimeSenCLIPError(
            f"normalize expects {len(BANDS)} bands ({' '.join(BANDS)}) along axis {band_axis}, "
            f"got an array of shape {tuple(dn.shape)}; pass band_axis= to name the band axis."
        )
    shape = [1] * dn.ndim
    shape[band_axis] = len(BANDS)
    index = conv.band_index
    reorder = index != tuple(range(len(BANDS)))
    if isinstance(dn, torch.Tensor):
        x = dn if dn.is_floating_point() else dn.float()
        if reorder:
            x = x.index_select(band_axis, torch.tensor(index, device=x.device))
        low = torch.tensor(conv.low, dtype=x.dtype, device=x.device).view(shape)
        high = torch.tensor(conv.high, dtype=x.dtype, device=x.device).view(shape)
        x = (x - low) / high
        return x.clamp(0.0, 1.0) if conv.clamp else x  # clamp keeps NaN
    x = np.asarray(dn)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if reorder:
        x = np.take(x, index, axis=band_axis)
    low = np.asarray(conv.low, dtype=x.dtype).reshape(shape)
    high = np.asarray(conv.high, dtype=x.dtype).reshape(shape)
    x = (x - low) / high
    return np.clip(x, 0.0, 1.0) if conv.clamp else x  # clip keeps NaN
