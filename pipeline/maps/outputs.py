"""What a region folder holds, by name, and the nodata value of each layer.

Every module that writes, reads, styles or validates an output takes its name from here, so a
task name can be checked against all of them in one place.
"""

from __future__ import annotations

CLASS_NODATA = 0
"""Pixel value of "no class" in class maps; classes are 1..K."""
CONFIDENCE_NODATA = 255
"""Pixel value of "no confidence" in confidence maps, which hold percent 0..100 as uint8."""
OUTSIDE_REGION = 255
"""valid_months holds 0..12 where a pixel is in the region; this marks pixels outside it."""
NODATA_NAME = "no data"

VALID_MONTHS = "valid_months"
PROVENANCE = "provenance.json"
EMBEDDINGS_STORE = "embeddings.zarr"
CONFIDENCE_SUFFIX = "_confidence"
RESERVED_NAMES = (VALID_MONTHS, "provenance", "embeddings")
"""Names a task may not take (nor any name ending in ``CONFIDENCE_SUFFIX``)."""


def confidence_layer(task: str) -> str:
    """The name of a class map's confidence layer."""
    return f"{task}{CONFIDENCE_SUFFIX}"
