"""TimeSenCLIP maps from Python: zero-shot land-cover, land-use, crop-type and habitat maps from
Sentinel-2 time series, xarray in and out.

    composites = monthly_composites(stack)  # a stackstac or odc-stac stack, or STAC items
    embeddings = embed(composites, checkpoint="hf-hub:OWNER/REPO/FILE")
    maps = classify(embeddings, "land_cover")  # or similarity(embeddings, ["a text"])
    to_cog(maps, "out")  # the styled COGs, QGIS styles and STAC Items a run writes
    kept = open_embeddings("out/region/embeddings.zarr")  # embeddings a run kept

Every function takes and returns lazy, Dask-backed xarray objects; nothing is read or computed
until asked (``.compute()``, a plot, ``to_cog``), with any Dask scheduler. Bad input raises
``TimeSenCLIPError`` saying what to pass. Importing this package loads nothing heavy; each name
is imported when first used (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timesenclip.common.errors import TimeSenCLIPError
    from timesenclip.composites import monthly_composites
    from timesenclip.embeddings import embed, open_embeddings
    from timesenclip.maps import classify, similarity, to_cog

_EXPORTS = {
    "TimeSenCLIPError": "timesenclip.common.errors",
    "monthly_composites": "timesenclip.composites",
    "embed": "timesenclip.embeddings",
    "open_embeddings": "timesenclip.embeddings",
    "classify": "timesenclip.maps",
    "similarity": "timesenclip.maps",
    "to_cog": "timesenclip.maps",
}

__all__ = [
    "TimeSenCLIPError",
    "__version__",
    "classify",
    "embed",
    "monthly_composites",
    "open_embeddings",
    "similarity",
    "to_cog",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from timesenclip.common.version import package_version

        return package_version()
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names too, so that ``help(timesenclip)`` and pydoc list them."""
    return sorted(set(globals()) | set(__all__))
