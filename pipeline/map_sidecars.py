"""Finish a map: its palette or colour ramp, the QGIS styles beside it and its STAC Item."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cog import class_category_names, class_colormap
from pipeline.qml import write_qml, write_ramp_qml
from pipeline.stac_output import class_item, ramp_item, write_item
from pipeline.style import CONFIDENCE_RAMP, VALID_MONTHS_RAMP

if TYPE_CHECKING:
    from pipeline.classify import Plan, TaskPlan
    from pipeline.similarity import ScoreRamp


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


def describe_ramp(
    map_path: Path,
    ramp: ScoreRamp,
    *,
    title: str,
    years: tuple[int, int],
    valid_months_path: Path | None = None,
    properties: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``<map>.qml`` (colour ramp with a labelled legend), then the Item ``<map>.json``."""
    style = write_ramp_qml(map_path.with_suffix(".qml"), ramp.qgis_ramp())
    item = ramp_item(
        map_path.stem,
        map_path,
        years=years,
        title=title,
        description=ramp.legend(),
        valid_months_path=valid_months_path,
        properties={"timesenclip:quantity": ramp.quantity, **(properties or {})},
    )
    return [style, write_item(item, map_path.with_suffix(".json"))]


def publish_plan(
    plan: Plan,
    write: Callable[..., Path],
    *,
    year: int,
    confidence: bool,
    class_resampling: str,
    valid_months_path: Path | None = None,
) -> list[Path]:
    """Write a task's final layers with ``write(name, **cog_keywords)``, then their styles and
    Items: the same for a ``run`` (mosaics of its tiles) and for a kept store. The writer knows
    each layer's nodata from ``plan.layers``."""
    paths = {
        name: write(name, **plan.style(name, class_resampling)) for name in plan.layers(confidence)
    }
    described = plan.describe(paths, year=year, valid_months_path=valid_months_path)
    return [*paths.values(), *described]
