"""Finish a class map: its palette and names, the QGIS style beside it and its STAC Item."""

from __future__ import annotations

from pathlib import Path

from pipeline.classify import TaskPlan
from pipeline.cog import class_category_names, class_colormap
from pipeline.qml import write_qml
from pipeline.stac_output import class_item, write_item


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
    """Write ``<map>.qml`` and the STAC Item ``<map>.json`` for a finished class map."""
    legend = task.legend()
    style = write_qml(map_path.with_suffix(".qml"), legend)
    item = class_item(
        map_path.stem,
        map_path,
        legend,
        year=year,
        title=f"{task.name} {year}",
        description=f"TimeSenCLIP zero-shot map of {len(task.classes)} classes ({task.name}).",
        confidence_path=confidence_path,
        valid_months_path=valid_months_path,
        style_path=style,
    )
    return [style, write_item(item, map_path.with_suffix(".json"))]
