"""TimeSenCLIP maps from Python: zero-shot land-cover, land-use, crop-type and habitat maps from
Sentinel-2 time series.

Importing this package loads nothing heavy; each name is imported when first used (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timesenclip.common.errors import TimeSenCLIPError

_EXPORTS = {
    "TimeSenCLIPError": "timesenclip.common.errors",
}

__all__ = ["TimeSenCLIPError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from timesenclip.common.version import package_version

        return package_version()
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value
