"""Reference points for an assessment: read from a table or a LUCAS survey, their labels turned into
the map's classes (by name, pixel value or a mapping the user gives)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import pandas as pd

from pipeline.assess.lucas import LucasFilter, read_lucas
from pipeline.assess.tables import read_vector
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.safe_yaml import parse_yaml


@dataclass(frozen=True)
class ReferenceSource:
    """Where reference labels come from and how to read them."""

    path: Path
    label: str = "reference"
    class_map: Path | None = None
    lon: str | None = None
    lat: str | None = None
    lucas: str | None = None
    """Read ``path`` as a LUCAS table with the labels of this task (land_cover or land_use)."""
    lucas_filter: LucasFilter = field(default_factory=LucasFilter)
    lucas_coords: str = "theoretical"


@dataclass(frozen=True)
class Reference:
    """The points (any CRS), each one's label text ("" for none), and why a point is not usable
    whatever the map says ("" where it is)."""

    points: gpd.GeoDataFrame
    labels: pd.Series
    excluded: pd.Series


def load_reference(source: ReferenceSource) -> Reference:
    if source.lucas:
        table = read_lucas(source.path, source.lucas, source.lucas_filter, source.lucas_coords)
        labels, excluded = table.pop("label"), table.pop("excluded").copy()
        excluded[(excluded == "") & (labels == "")] = f"its code has no {source.lucas} class"
        return Reference(table, labels, excluded)
    table = read_vector(source.path, source.lon, source.lat)
    if source.label not in table.columns:
        columns = ", ".join(c for c in table.columns if c != table.geometry.name)
        raise TimeSenCLIPError(
            f"{source.path} has no label column {source.label!r}: name the column holding each "
            f"point's reference class with --label (its columns: {columns})"
        )
    labels = table[source.label].map(as_label)
    excluded = pd.Series("", index=table.index)
    excluded[labels == ""] = "no reference label"
    excluded[table.geometry.isna() | table.geometry.is_empty] = "no location"
    if source.class_map is not None:
        mapping = read_class_map(source.class_map)
        unmapped = (excluded == "") & ~labels.isin(list(mapping))
        excluded[unmapped] = "label " + labels[unmapped].map(repr) + " is not in the class map"
        labels = labels.map(mapping).fillna("")
    return Reference(table, labels, excluded)


def read_class_map(path: Path) -> dict[str, str]:
    """Label -> class name, from a two-column CSV (label, class) or a YAML mapping."""
    path = Path(path)
    if not path.is_file():
        raise TimeSenCLIPError(f"class map {path} not found")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if table.shape[1] < 2:
            raise TimeSenCLIPError(f"{path}: a class map CSV has two columns, label and class")
        pairs = zip(table.iloc[:, 0], table.iloc[:, 1], strict=True)
    else:
        document, _ = parse_yaml(path.read_text(encoding="utf-8"), f"class map {path}")
        if not isinstance(document, Mapping):
            raise TimeSenCLIPError(
                f"{path} is not a mapping: write one 'label: class name' line per label"
            )
        pairs = document.items()
    mapping = {as_label(label): as_label(name) for label, name in pairs}
    if not mapping or "" in mapping.values():
        raise TimeSenCLIPError(f"{path}: give every label a class name (label, class)")
    return mapping


def as_label(value: object) -> str:
    """A label as text: stripped, integral numbers without ".0", "" for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()
