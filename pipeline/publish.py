"""Finish a class map: its palette and names, the QGIS styles beside it and its STAC Item."""

from __future__ import annotations

from pathlib import Path

from pipeline.classify import TaskPlan
from pipeline.cog import class_category_names, class_colormap
from pipeline.qml import write_qml, write_ramp_qml
from pipeline.stac_output import class_item, write_item
from pipeline.style import CONFIDENCE_RAMP, VALID_MONTHS_RAMP


def map_style(task: TaskPlan) -> dict:
    """Keyword arguments that give a class COG its palette and category names."""
    legend = task.legend()
    return {"colormap": class_colormap(legend), "category_names": class_category_names(legend)}


def describe_map(
    map_path: Path,
    task: TaskPlan,
    *,
    year: int,
    confidence_path: Path | None = None,
    valid_months_path: Path | None = None,
) -> list[Path]:
    """Write the QGIS styles (``<map>.qml`` and one beside each quality layer) and then the STAC
    Item ``<map>.json`` listing every file; return the files written."""
    legend = task.legend()
    written = [write_qml(map_path.with_suffix(".qml"), legend)]
    for layer, ramp in ((confidence_path, CONFIDENCE_RAMP), (valid_months_path, VALID_MONTHS_RAMP)):
        if layer is not None:
            written.append(write_ramp_qml(Path(layer).with_suffix(".qml"), ramp))
    item = class_item(
        map_path.stem,
        map_path,
        legend,
        year=year,
        title=f"{task.name} {year}",
        description=f"TimeSenCLIP zero-shot map of {len(task.classes)} classes ({task.name}).",
        confidence_path=confidence_path,
        valid_months_path=valid_months_path,
    )
    return [*written, write_item(item, map_path.with_suffix(".json"))]
