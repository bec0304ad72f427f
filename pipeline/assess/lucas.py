"""LUCAS survey points as reference data, their codes turned into the built-in classes.

Reads the harmonised 2006-2018 table (``lc1``, ``lu1``, ``th_lat``/``th_long``,
``gps_lat``/``gps_long``, ``lc1_perc``, ``obs_type``; any case, so the yearly primary tables too)
and the 2022 table (``SURVEY_LC1``, ``SURVEY_LU1``, ``POINT_LAT``/``POINT_LONG``, ...). LC1 codes
become ``land_cover`` classes and LU1 codes ``land_use`` classes through the code lists the
published model was trained with (``encoder.label_routes``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from timesenclip.common.errors import TimeSenCLIPError

LUCAS_TASKS = ("land_cover", "land_use")
COORDINATES = ("theoretical", "gps")
_ALIASES = {"point_lat": "th_lat", "point_long": "th_long", "point_lon": "th_long"}
_RAW_FIELD = {"land_cover": "lc1", "land_use": "lu1"}
_IN_SITU = re.compile(r"^\s*(1|2|in situ\s*[<>])", re.IGNORECASE)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class LucasFilter:
    """Quality filters: LC1 covering at least ``min_lc1_perc`` %, field observations only."""

    min_lc1_perc: float | None = None
    in_situ: bool = False


def read_lucas(
    path: Path | str,
    task: str,
    quality: LucasFilter = LucasFilter(),
    coordinates: str = "theoretical",
) -> gpd.GeoDataFrame:
    """LUCAS points (WGS84) with a ``label`` column: the ``task`` class name, or "" where the code
    has none; ``excluded`` says why a point fails the filters ("" where it passes)."""
    if task not in LUCAS_TASKS:
        raise TimeSenCLIPError(f"LUCAS gives {' and '.join(LUCAS_TASKS)} labels, not {task!r}")
    if coordinates not in COORDINATES:
        raise TimeSenCLIPError(f"--lucas-coords {coordinates!r}: use {' or '.join(COORDINATES)}")
    path = Path(path)
    if not path.is_file():
        raise TimeSenCLIPError(f"LUCAS table {path} not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = _columns(table)
    prefix = "th" if coordinates == "theoretical" else "gps"
    needed = [_RAW_FIELD[task], f"{prefix}_lat", f"{prefix}_long"]
    needed += ["lc1_perc"] if quality.min_lc1_perc is not None else []
    needed += ["obs_type"] if quality.in_situ else []
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TimeSenCLIPError(
            f"{path} has no {', '.join(missing)} column: is it a LUCAS table (harmonised "
            "2006-2018, a yearly primary table, or 2022's SURVEY_/POINT_ columns)?"
        )
    lat = pd.to_numeric(table[columns[f"{prefix}_lat"]], errors="coerce")
    lon = pd.to_numeric(table[columns[f"{prefix}_long"]], errors="coerce")
    # LUCAS writes 88.888888 where a GPS position is missing.
    located = lat.between(-90, 90) & lon.between(-180, 180) & (lat.round(6) != 88.888888)
    excluded = pd.Series("", index=table.index)
    excluded[~located] = f"no {coordinates} position"
    if quality.in_situ:
        field = table[columns["obs_type"]].str.match(_IN_SITU)
        excluded[(excluded == "") & ~field] = "not observed in situ"
    if quality.min_lc1_perc is not None:
        cover = table[columns["lc1_perc"]].map(_percent_floor)
        excluded[(excluded == "") & ~(cover >= quality.min_lc1_perc)] = (
            f"lc1_perc below {quality.min_lc1_perc:g} %"
        )
    out = gpd.GeoDataFrame(
        table,
        geometry=gpd.points_from_xy(lon.where(located, 0.0), lat.where(located, 0.0)),
        crs="EPSG:4326",
    )
    out["label"] = _labels(table[columns[_RAW_FIELD[task]]], task)
    out["excluded"] = excluded
    return out


def _columns(table: pd.DataFrame) -> dict[str, str]:
    """Canonical (harmonised) column name -> the table's column."""
    found = {}
    for column in table.columns:
        name = column.strip().lower().removeprefix("survey_")
        found.setdefault(_ALIASES.get(name, name), column)
    return found


def _percent_floor(text: str) -> float:
    """The lowest share a ``lc1_perc`` value allows: a percentage as is, a class such as
    "50 - 75 %" its lower bound, "< 10 %" 0; NaN where empty."""
    text = text.strip()
    if text.startswith("<"):
        return 0.0
    number = _PERCENT.search(text)
    return float(number.group(1)) if number else np.nan


def _labels(codes: pd.Series, task: str) -> list[str]:
    from encoder.classes import class_set
    from encoder.label_routes import LabelRouter

    names = [spec.name for spec in class_set(task)]
    router = LabelRouter([task])
    field = _RAW_FIELD[task]
    lookup = {}
    for code in codes.unique():
        index = router.route({field: code})[task]
        lookup[code] = names[index] if index >= 0 else ""
    return codes.map(lookup).tolist()
