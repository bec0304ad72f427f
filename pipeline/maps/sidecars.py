"""Finish a map: its palette or colour ramp, the QGIS styles beside it and its STAC Item."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.maps.cog import class_category_names, class_colormap
from pipeline.maps.qml import write_qml, write_ramp_qml
from pipeline.maps.stac_items import class_item, ramp_item, write_item
from pipeline.maps.style import CONFIDENCE_RAMP, VALID_MONTHS_RAMP, StyledClass

if TYPE_CHECKING:
    from pipeline.maps.similarity import ScoreRamp


class ClassLegend(Protocol):
    """What a class map's sidecars need of its task (``pipeline.maps.classify.TaskPlan``)."""

    name: str
    classes: Sequence[Any]

    def legend(self) -> list[StyledClass]: ...


def map_style(task: ClassLegend) -> dict:
    """Keyword arguments that give a class COG its palette and category names."""
    legend = task.legend()
    return {"colormap": class_colormap(legend), "category_names": class_category_names(legend)}


def describe_map(
    map_path: Path,
    task: ClassLegend,
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
