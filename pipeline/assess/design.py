"""Stratified random samples of a class map, its classes as the strata (Olofsson et al. 2014).

Points are pixels drawn without replacement within each class, so no two share a pixel; nodata is
never drawn. Drawing is two passes over the map, block by block: the first counts each class per
block, then each class's chosen ranks (among its pixels, in block order) are found in the blocks
that hold them. Memory holds the counts and one block, whatever the map's size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from pipeline.assess.classmap import BLOCK, Census, ClassMap
from pipeline.assess.tables import write_points
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

ALLOCATIONS = ("proportional", "equal", "given")


@dataclass(frozen=True)
class Sample:
    """A drawn sample: one row per point, and the design it was drawn under."""

    points: pd.DataFrame
    pixels: dict[str, int]
    allocation: dict[str, int]

    def summary(self) -> str:
        total = sum(self.pixels.values())
        lines = [f"{'class':32s} {'pixels':>12s} {'share':>7s} {'points':>7s} {'weight':>12s}"]
        for name, pixels in self.pixels.items():
            n = self.allocation[name]
            weight = f"{pixels / n:12.1f}" if n else f"{'-':>12s}"
            lines.append(f"{name[:32]:32s} {pixels:12d} {pixels / total:7.2%} {n:7d} {weight}")
        return "\n".join(lines)


def allocate(
    pixels: Mapping[int, int],
    n: int | None,
    method: str = "proportional",
    minimum: int = 50,
    given: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Sample size per class value: ``proportional`` to its pixels with at least ``minimum`` each
    (a class smaller than that gets all its pixels), ``equal``, or ``given`` per class."""
    if method == "given":
        counts = {value: int((given or {}).get(value, 0)) for value in pixels}
        for value, count in counts.items():
            if count > pixels[value]:
                raise TimeSenCLIPError(
                    f"{count} points asked for class value {value}, which has {pixels[value]} "
                    "pixels: ask for at most as many points as pixels"
                )
        if not any(counts.values()):
            raise TimeSenCLIPError("no points asked for: give --per-class CLASS=N for some class")
        return counts
    if method not in ALLOCATIONS:
        raise TimeSenCLIPError(f"allocation {method!r}: choose one of {', '.join(ALLOCATIONS)}")
    total = sum(pixels.values())
    if n is None or n < 1 or n > total:
        raise TimeSenCLIPError(
            f"sample size {n}: give --n between 1 and the map's {total} classified pixels"
        )
    values = list(pixels)
    caps = np.array([pixels[v] for v in values])
    if method == "equal":
        return dict(zip(values, _spread(n, np.ones(len(values)), caps).tolist(), strict=True))
    base = np.minimum(minimum, caps)
    if base.sum() > n:
        raise TimeSenCLIPError(
            f"--n {n} is less than --min-per-class {minimum} for each of the map's {len(values)} "
            f"classes ({base.sum()} points): raise --n or lower --min-per-class"
        )
    extra = _spread(n - int(base.sum()), caps.astype(float), caps - base)
    return dict(zip(values, (base + extra).tolist(), strict=True))


def _spread(total: int, shares: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """``total`` whole units in proportion to ``shares``, none above its cap (largest remainder,
    the units a capped class cannot take going to the others)."""
    out = np.zeros(len(shares), dtype=np.int64)
    while total > 0:
        open_ = out < caps
        want = np.where(open_, shares, 0.0)
        exact = total * want / want.sum()
        step = np.minimum(np.floor(exact).astype(np.int64), caps - out)
        left = total - int(step.sum())
        order = np.argsort(-(exact - np.floor(exact)) + np.where(open_, 0, np.inf), kind="stable")
        for i in order[:left]:
            if out[i] + step[i] < caps[i]:
                step[i] += 1
        out += step
        total -= int(step.sum())
    return out


def draw(
    classmap: ClassMap, census: Census, allocation: Mapping[int, int], seed: int | None
) -> pd.DataFrame:
    """The chosen pixels: ``value``, ``row``, ``col`` per point, in a random order."""
    rng = np.random.default_rng(seed)
    wanted = {
        value: np.sort(rng.choice(census.pixels[value], n, replace=False))
        for value, n in sorted(allocation.items())
        if n
    }
    picks = {}
    for value, ranks in wanted.items():
        ends = np.cumsum(census.window_counts(value))
        where = np.searchsorted(ends, ranks, side="right")
        picks[value] = (where, ranks - np.concatenate([[0], ends])[where])
    found = []
    with rasterio.open(classmap.path) as src:
        for index in sorted({int(w) for where, _ in picks.values() for w in where}):
            window = census.windows[index]
            flat = src.read(1, window=window).ravel()
            for value, (where, local) in picks.items():
                chosen = np.flatnonzero(flat == value)[local[where == index]]
                rows, cols = np.divmod(chosen, window.width)
                found.append(
                    pd.DataFrame(
                        {"value": value, "row": rows + window.row_off, "col": cols + window.col_off}
                    )
                )
    points = pd.concat(found, ignore_index=True)
    # A random order keeps interpreters from seeing the strata in the ids.
    return points.iloc[rng.permutation(len(points))].reset_index(drop=True)


def sample_map(
    map_path: Path | str,
    n: int | None,
    out: Path | str,
    *,
    allocation: str = "proportional",
    minimum: int = 50,
    per_class: Mapping[str, int] | None = None,
    seed: int | None = 0,
    block: int = BLOCK,
) -> tuple[Sample, list[Path]]:
    """Draw a stratified random sample of ``map_path`` and write it as GeoPackage and CSV."""
    classmap = ClassMap.open(map_path)
    census = classmap.census(block)
    if not census.pixels:
        raise TimeSenCLIPError(f"{classmap.path} holds only nodata: there is nothing to sample")
    given = _given_values(classmap, census, per_class) if per_class else None
    if given is not None:
        allocation = "given"
    sizes = allocate(census.pixels, n, allocation, minimum, given)
    for value, count in sizes.items():
        if count == 0:
            log.warning(
                "class %r gets no sample point: it cannot be assessed", classmap.name(value)
            )
    chosen = draw(classmap, census, sizes, seed)
    table = _points_table(classmap, census, sizes, chosen)
    sample = Sample(
        points=table,
        pixels={classmap.name(v): c for v, c in census.pixels.items()},
        allocation={classmap.name(v): sizes[v] for v in census.pixels},
    )
    return sample, write_points(table, Path(out))


def _given_values(
    classmap: ClassMap, census: Census, per_class: Mapping[str, int]
) -> dict[int, int]:
    by_name = {classmap.name(v).casefold(): v for v in census.pixels}
    given = {}
    for key, count in per_class.items():
        value = by_name.get(key.strip().casefold())
        if value is None and key.strip().isdigit() and int(key) in census.pixels:
            value = int(key)
        if value is None:
            raise TimeSenCLIPError(
                f"--per-class names {key!r}, which is not a class of {classmap.path}: use one of "
                f"{', '.join(classmap.name(v) for v in census.pixels)} (or its pixel value)"
            )
        given[value] = count
    return given


def _points_table(
    classmap: ClassMap, census: Census, sizes: Mapping[int, int], chosen: pd.DataFrame
) -> pd.DataFrame:
    from pyproj import Transformer

    x, y = classmap.transform * (chosen["col"].to_numpy() + 0.5, chosen["row"].to_numpy() + 0.5)
    lon, lat = Transformer.from_crs(classmap.crs, "EPSG:4326", always_xy=True).transform(x, y)
    values = chosen["value"].to_numpy()
    size = np.array([census.pixels[v] for v in values])
    names = np.array([classmap.name(v) for v in values], dtype=object)
    return pd.DataFrame(
        {
            "id": np.arange(1, len(chosen) + 1),
            "lon": lon,
            "lat": lat,
            "map_value": values,
            "map_class": names,
            "stratum": names,
            "stratum_size": size,
            "inclusion_weight": size / np.array([sizes[v] for v in values]),
            "reference": "",
        }
    )
