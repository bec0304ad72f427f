"""Per-item BOA offset rule: bring Sentinel-2 L2A digital numbers to the pre-2022 scale.

From processing baseline 04.00 on, L2A digital numbers carry +1000 (BOA_ADD_OFFSET = -1000); the
model was trained on the older scale. The decision uses only item metadata, never the date:

1. ``earthsearch:boa_offset_applied: true`` -> the provider already removed the +1000: offset 0.
2. else the processing baseline (``s2:processing_baseline``, or the ``N0400`` / ``N04.00`` token
   of a product, datatake, granule or tile name when that property is absent) >= 04.00 -> 1000.
3. else a baseline below 04.00 -> offset 0.
4. no baseline anywhere -> offset 0, assumed, logged as a warning and said in the rule text.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import pystac

log = logging.getLogger(__name__)

BOA_OFFSET = 1000
OFFSET_BASELINE = (4, 0)
BASELINE_PROPERTY = "s2:processing_baseline"
APPLIED_PROPERTY = "earthsearch:boa_offset_applied"
# Properties whose values embed the baseline as "_N0511_" or "_N05.11" (ESA naming); the
# Earth Search v0 catalogue, for one, has only sentinel:product_id.
NAME_PROPERTIES = (
    "s2:product_uri",
    "sentinel:product_id",
    "s2:datatake_id",
    "s2:granule_id",
    "s2:tile_id",
    "s2:datastrip_id",
)
_BASELINE_TEXT = re.compile(r"^(\d{1,2})\.(\d{2})$")
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})\.?(\d{2})(?![0-9])")


@dataclass(frozen=True)
class Harmonization:
    """The rule applied to one item: subtract ``offset`` from every band's digital numbers."""

    item_id: str
    offset: int
    rule: str


def harmonization(item: pystac.Item | dict) -> Harmonization:
    """Decide the DN offset to subtract from ``item``'s bands (0 or 1000) and say why."""
    item_id, props = _id_and_properties(item)
    applied = props.get(APPLIED_PROPERTY)
    found = _baseline(props)
    if applied is True:
        where = f"baseline {found[0]}" if found else "baseline unknown"
        return Harmonization(item_id, 0, f"{where}, {APPLIED_PROPERTY} true: 0")
    if found is None:
        log.warning(
            "item %s has no processing baseline (%s or a _Nxxyy product name): "
            "assuming its digital numbers carry no BOA offset",
            item_id,
            BASELINE_PROPERTY,
        )
        return Harmonization(item_id, 0, "no processing baseline found: assumed no offset, 0")
    text, version, source = found
    flag = f"{APPLIED_PROPERTY} {'false' if applied is False else 'absent'}"
    origin = "" if source == BASELINE_PROPERTY else f" (from {source})"
    if version >= OFFSET_BASELINE:
        return Harmonization(
            item_id, BOA_OFFSET, f"baseline {text}{origin} >= 04.00, {flag}: -1000"
        )
    return Harmonization(item_id, 0, f"baseline {text}{origin} < 04.00: 0")


def _id_and_properties(item: pystac.Item | dict) -> tuple[str, dict[str, Any]]:
    if isinstance(item, pystac.Item):
        return item.id, item.properties
    return str(item.get("id", "<no id>")), item.get("properties") or {}


def _baseline(props: dict[str, Any]) -> tuple[str, tuple[int, int], str] | None:
    """(text "05.09", version (5, 9), property it came from), or None when nowhere to be found."""
    value = props.get(BASELINE_PROPERTY)
    if value is not None:
        match = _BASELINE_TEXT.match(str(value).strip())
        if match:
            major, minor = int(match[1]), int(match[2])
            return f"{major:02d}.{minor:02d}", (major, minor), BASELINE_PROPERTY
        log.warning("unreadable %s %r: looking in product names instead", BASELINE_PROPERTY, value)
    for name in NAME_PROPERTIES:
        match = _BASELINE_IN_NAME.search(str(props.get(name, "")))
        if match:
            major, minor = int(match[1]), int(match[2])
            return f"{major:02d}.{minor:02d}", (major, minor), name
    return None
