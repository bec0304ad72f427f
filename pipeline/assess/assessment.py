"""Assess a class map against reference points: which estimator applies, which points count, and
areas in hectares from the map's own pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.assess.classmap import BLOCK, Census, ClassMap
from pipeline.assess.estimators import Accuracy, estimate
from pipeline.assess.reference import Reference, ReferenceSource, as_label, load_reference
from timesenclip.common.errors import TimeSenCLIPError

OLOFSSON = "Olofsson et al. (2014): the strata are the map's classes"
STEHMAN = "Stehman (2014): the strata differ from the map's classes"


@dataclass(frozen=True)
class StrataSource:
    """The sampling strata when they are not the map's classes: a column of the reference table
    with stratum sizes (a CSV ``stratum,size`` or a column holding each point's stratum size), or
    a raster whose values are the strata."""

    column: str | None = None
    sizes: str | None = None
    raster: Path | None = None


@dataclass(frozen=True)
class Assessment:
    """An assessed map: the estimates and what they rest on. Areas are in hectares."""

    map_path: Path
    method: str
    accuracy: Accuracy
    mapped_pixels: np.ndarray
    mapped_ha: np.ndarray
    estimated_total_ha: float
    pixel_size: str
    points: pd.DataFrame
    """Every reference point: lon, lat, label, map class, stratum, and why it is left out."""
    notes: tuple[str, ...]

    @property
    def area_ha(self) -> np.ndarray:
        return self.accuracy.area * self.estimated_total_ha

    @property
    def area_se_ha(self) -> np.ndarray:
        return self.accuracy.area_se * self.estimated_total_ha


def assess_map(
    map_path: Path | str,
    reference: ReferenceSource,
    strata: StrataSource | None = None,
    block: int = BLOCK,
) -> Assessment:
    """Estimate accuracy and error-adjusted areas of ``map_path`` from ``reference`` points."""
    classmap = ClassMap.open(map_path)
    census = classmap.census(block)
    if not census.pixels:
        raise TimeSenCLIPError(f"{classmap.path} holds only nodata: there is nothing to assess")
    ref = load_reference(reference)
    values, excluded = _map_values(classmap, ref)
    map_classes = {v: classmap.name(v) for v in census.pixels}
    labels, extra = _classes_of(ref, map_classes, excluded, trusted=_trusted(reference))
    classes = [*map_classes.values(), *extra]
    stratum_of, sizes, stratum_names, area_m2 = _strata(
        strata, classmap, census, ref, values, excluded, block
    )
    lonlat = ref.points.geometry.to_crs("EPSG:4326")
    points = pd.DataFrame(
        {
            "lon": lonlat.x,
            "lat": lonlat.y,
            "label": ref.labels,
            "map_class": [classmap.name(v) if v >= 0 else "" for v in values],
            "stratum": [stratum_names[s] if s >= 0 else "" for s in stratum_of],
            "excluded": excluded,
        },
        index=ref.points.index,
    )
    used = (excluded == "").to_numpy()
    if not used.any():
        reasons = excluded.value_counts().to_dict()
        raise TimeSenCLIPError(
            f"none of the {len(excluded)} reference points can be used ({reasons}): check that "
            "the points lie on the map and their labels name its classes"
        )
    index = {name: i for i, name in enumerate(classes)}
    accuracy = estimate(
        stratum_of[used],
        [index[classmap.name(v)] for v in values[used]],
        [index[label] for label in labels[used]],
        sizes,
        classes,
        stratum_names,
    )
    sampled = np.bincount(stratum_of[used], minlength=len(sizes)) > 0
    mapped_pixels = np.array([*census.pixels.values()] + [0] * len(extra))
    notes = list(accuracy.notes)
    if extra:
        notes.append(
            f"reference classes absent from the map ({', '.join(map(repr, extra))}): their "
            "user's accuracy is unknown and their producer's accuracy 0"
        )
    if classmap.crs.is_geographic:
        notes.append(
            "the map is in geographic coordinates: pixels differ in area, and hectares are the "
            "estimated shares of the mapped area"
        )
    return Assessment(
        map_path=classmap.path,
        method=OLOFSSON if strata is None else STEHMAN,
        accuracy=accuracy,
        mapped_pixels=mapped_pixels,
        mapped_ha=np.array([census.area_m2[v] / 1e4 for v in census.pixels] + [0.0] * len(extra)),
        estimated_total_ha=float(area_m2[sampled].sum() / 1e4),
        pixel_size=_pixel_size(classmap),
        points=points,
        notes=tuple(notes),
    )


def _trusted(source: ReferenceSource) -> bool:
    """Whether labels are class names already (a LUCAS task or a user's mapping), so a label
    that is no class of the map is a reference class absent from it, not a typo."""
    return bool(source.lucas or source.class_map)


def _map_values(classmap: ClassMap, ref: Reference) -> tuple[np.ndarray, pd.Series]:
    excluded = ref.excluded.copy()
    if ref.points.crs is None:
        raise TimeSenCLIPError(
            "the reference points have no coordinate reference system: save them with one "
            "(a CSV's lon/lat columns are read as WGS84)"
        )
    located = (excluded == "").to_numpy()
    xy = ref.points.geometry[located].to_crs(classmap.crs)
    values = np.full(len(excluded), -1, dtype=np.int64)
    found, on_class = classmap.values_at(xy.x.to_numpy(), xy.y.to_numpy())
    values[located] = found
    reason = np.where(found < 0, "outside the map", "on the map's nodata")
    where = np.flatnonzero(located)[~on_class]
    excluded.iloc[where] = reason[~on_class]
    values[where] = -1
    return values, excluded


def _classes_of(
    ref: Reference, map_classes: dict[int, str], excluded: pd.Series, trusted: bool
) -> tuple[np.ndarray, list[str]]:
    """Each point's class name (matched case-blind, or by pixel value) and the reference classes
    that are not the map's; points whose label names no class are excluded (in place)."""
    by_key = {str(value): name for value, name in map_classes.items()}
    by_key |= {name.casefold(): name for name in map_classes.values()}
    labels, extra = [], []
    for i, label in enumerate(ref.labels):
        name = by_key.get(label.casefold(), "")
        if not name and trusted and label:
            name = label
            if label not in extra:
                extra.append(label)
        if not name and excluded.iloc[i] == "":
            excluded.iloc[i] = f"label {label!r} is not a class of the map (give --class-map)"
        labels.append(name)
    if extra and all(label in extra for label in labels if label):
        raise TimeSenCLIPError(
            f"no reference label names a class of the map ({', '.join(extra[:5])}...; the map "
            f"has {', '.join(map_classes.values())}): check --lucas or --class-map"
        )
    return np.array(labels, dtype=object), sorted(extra)


def _strata(
    strata: StrataSource | None,
    classmap: ClassMap,
    census: Census,
    ref: Reference,
    values: np.ndarray,
    excluded: pd.Series,
    block: int,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Per point its stratum index (-1 for none), the stratum sizes and names, and each
    stratum's area in m²."""
    map_values = list(census.pixels)
    if strata is None:
        index = {v: i for i, v in enumerate(map_values)}
        stratum_of = np.array([index.get(v, -1) for v in values])
        sizes = np.array([census.pixels[v] for v in map_values], dtype=float)
        area = np.array([census.area_m2[v] for v in map_values])
        return stratum_of, sizes, [classmap.name(v) for v in map_values], area
    if strata.raster is not None:
        return _raster_strata(strata.raster, ref, excluded, block)
    if strata.column is None or strata.sizes is None:
        raise TimeSenCLIPError(
            "strata that are not the map's classes need --strata COLUMN with --strata-sizes "
            "(a CSV of stratum,size or a column of stratum sizes), or --strata-raster"
        )
    if strata.column not in ref.points.columns:
        raise TimeSenCLIPError(f"the reference table has no strata column {strata.column!r}")
    labels = ref.points[strata.column].map(as_label)
    sizes = _stratum_sizes(strata.sizes, ref.points, labels)
    names = list(sizes)
    index = {name: i for i, name in enumerate(names)}
    unknown = (excluded == "") & ~labels.isin(names)
    excluded[unknown] = "stratum " + labels[unknown].map(repr) + " has no size"
    stratum_of = np.array([index.get(s, -1) for s in labels])
    size_array = np.array([sizes[n] for n in names], dtype=float)
    mapped_m2 = sum(census.area_m2.values())
    # Sizes in their own units: the strata are taken to cover the map's classified area.
    return stratum_of, size_array, names, size_array / size_array.sum() * mapped_m2


def _stratum_sizes(spec: str, points: pd.DataFrame, labels: pd.Series) -> dict[str, float]:
    if spec in points.columns:
        sizes = pd.to_numeric(points[spec], errors="coerce").groupby(labels).agg(["min", "max"])
        uneven = sizes.index[(sizes["min"] != sizes["max"]) | sizes["min"].isna()]
        if len(uneven):
            raise TimeSenCLIPError(
                f"column {spec!r} gives strata {', '.join(map(repr, uneven[:5]))} several or no "
                "sizes: every point of a stratum carries the same stratum size"
            )
        return sizes["min"].to_dict()
    path = Path(spec)
    if not path.is_file():
        raise TimeSenCLIPError(
            f"--strata-sizes {spec!r} is neither a column of the reference table nor a file: "
            "give a CSV with columns stratum,size or the name of a column of stratum sizes"
        )
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    sizes = pd.to_numeric(table.iloc[:, 1] if table.shape[1] > 1 else None, errors="coerce")
    if table.shape[1] < 2 or sizes.isna().any() or (sizes <= 0).any():
        raise TimeSenCLIPError(f"{path}: give one 'stratum,size' row per stratum, sizes > 0")
    return dict(zip(table.iloc[:, 0].str.strip(), sizes, strict=True))


def _raster_strata(
    path: Path, ref: Reference, excluded: pd.Series, block: int
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    strata_map = ClassMap.open(path)
    census = strata_map.census(block)
    values = list(census.pixels)
    located = (excluded == "").to_numpy()
    xy = ref.points.geometry[located].to_crs(strata_map.crs)
    found, on_class = strata_map.values_at(xy.x.to_numpy(), xy.y.to_numpy())
    index = {v: i for i, v in enumerate(values)}
    stratum_of = np.full(len(excluded), -1)
    stratum_of[located] = np.where(on_class, [index.get(v, -1) for v in found], -1)
    excluded.iloc[np.flatnonzero(located)[~on_class]] = "outside the strata raster"
    sizes = np.array([census.pixels[v] for v in values], dtype=float)
    area = np.array([census.area_m2[v] for v in values])
    return stratum_of, sizes, [strata_map.name(v) for v in values], area


def _pixel_size(classmap: ClassMap) -> str:
    a, e = classmap.transform.a, abs(classmap.transform.e)
    unit = "°" if classmap.crs.is_geographic else " m"
    return f"{a:g}{unit} x {e:g}{unit} in {classmap.crs.to_string()}"
