"""Label routing: which raw label field feeds which task, through which class list.

Labels are routed to tasks by an explicit table (:data:`LABEL_ROUTES`), so e.g. crop labels can
only come from the LC1 code through the crop class list and bioregion labels only from the
bioregion field.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from encoder.classes import reference_classes
from encoder.pairs import PairsError

log = logging.getLogger(__name__)

RAW_FIELDS = ("lc1", "lu1", "eunis", "bioregion", "country")

# task -> (key under `tasks` in classes.yaml, raw field it is read from, class attribute holding
# the raw codes; None = the raw value is the class name or the class index).
LABEL_ROUTES: dict[str, tuple[str, str, str | None]] = {
    "land_cover": ("lc", "lc1", "lucas_lc1_codes"),
    "land_use": ("lu", "lu1", "lucas_lu1_codes"),
    "crop_type": ("crop", "lc1", "lucas_lc1_code"),
    "bioregion": ("bioregion", "bioregion", None),
    "eunis_habitat": ("eunis", "eunis", None),
    "country": ("nuts", "country", "nuts0"),
}
TASKS = tuple(LABEL_ROUTES)
_MISSING = {"", "NA", "NAN", "NONE", "NULL", "-1"}


def check_task(task: str) -> str:
    """``task`` if it is a known task name, else a clear error."""
    if task not in LABEL_ROUTES:
        raise PairsError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def label_text(value: Any) -> str:
    """A raw label value as a stripped string; "" for missing (None, NaN, NA, -1)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            value = int(value)
    text = str(value).strip() if value is not None else ""
    return "" if text.upper() in _MISSING else text


class LabelRouter:
    """Map raw label codes to class indices per task, by the explicit :data:`LABEL_ROUTES` table.

    A raw record maps field names (``lc1``, ``lu1``, ``eunis``, ``bioregion``, ``country``) or task
    names (``land_cover``... given as class name or index) to values. A field read through a code
    list (LC1, LU1, NUTS0) takes the codes or the class names; ``eunis`` and ``bioregion`` take the
    class name or index. Unknown values become -1 and are counted in :attr:`unknown`.
    """

    def __init__(self, tasks: Sequence[str] = TASKS) -> None:
        self.tasks = tuple(check_task(t) for t in tasks)
        self.unknown: Counter[tuple[str, str]] = Counter()
        self._codes: dict[str, dict[str, int]] = {}
        self._names: dict[str, dict[str, int]] = {}
        for task in self.tasks:
            yaml_key, _, code_attr = LABEL_ROUTES[task]
            codes, names = {}, {}
            for i, entry in enumerate(reference_classes(yaml_key)):
                names[entry["name"].casefold()] = names[str(i)] = i
                listed = entry.get(code_attr, []) if code_attr else []
                codes |= {c.upper(): i for c in ([listed] if isinstance(listed, str) else listed)}
            self._codes[task], self._names[task] = codes, names

    def route(self, raw: Mapping[str, Any]) -> dict[str, int]:
        """Class index (or -1) per task for one point's raw labels."""
        out = {}
        for task in self.tasks:
            _, raw_field, code_attr = LABEL_ROUTES[task]
            direct = label_text(raw.get(task))
            value = direct or label_text(raw.get(raw_field))
            index = self._codes[task].get(value.upper())
            # A bare number is a class index only where no code list applies (or named directly).
            if index is None and (direct or not (code_attr and value.isdigit())):
                index = self._names[task].get(value.casefold())
            # LC1 codes of non-crop land are expected to have no crop class: not "unknown".
            if index is None and value and task != "crop_type":
                self.unknown[(task, value)] += 1
            out[task] = -1 if index is None else index
        return out

    def warn_unknown(self) -> None:
        """Log one warning listing the unknown codes seen so far."""
        if self.unknown:
            shown = ", ".join(f"{t}={v!r} x{n}" for (t, v), n in self.unknown.most_common(10))
            log.warning("label values with no class (set to -1): %s", shown)
