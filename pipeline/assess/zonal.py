"""Class areas inside polygons (administrative units, protected sites), each pixel counted by the
fraction of it a polygon covers, computed exactly by exactextract."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from pipeline.assess.classmap import ClassMap
from pipeline.assess.tables import read_vector, write_table
from timesenclip.common.errors import TimeSenCLIPError

TABLE_SUFFIXES = (".csv", ".parquet", ".geoparquet")


def zonal_areas(map_path: Path | str, zones_path: Path | str) -> gpd.GeoDataFrame:
    """One row per zone: its attributes, ``zone_ha`` (its area in the map's CRS),
    ``classified_ha`` (the part on classes, not nodata or off the map) and ``<class>_ha`` for
    each class of the map, partial pixels weighted by the fraction each zone covers."""
    from exactextract import exact_extract

    classmap = ClassMap.open(map_path)
    zones = read_vector(zones_path)
    if zones.crs is None:
        raise TimeSenCLIPError(f"{zones_path} has no coordinate reference system: save it with one")
    if len(zones) == 0 or not zones.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        raise TimeSenCLIPError(
            f"{zones_path}: zones must be polygons (it has {', '.join(zones.geom_type.unique())})"
        )
    projected = zones.to_crs(classmap.crs).reset_index(drop=True)
    geographic = classmap.crs.is_geographic
    # A projected map's pixels share one area; a geographic map's are weighed on the sphere.
    weight = "(coverage_weight=area_spherical_m2)" if geographic else ""
    with rasterio.open(classmap.path) as src:
        stats = exact_extract(
            src,
            projected[[projected.geometry.name]],
            [f"unique{weight}", f"frac{weight}", f"count{weight}"],
            output="pandas",
        )
    unit = 1.0 if geographic else float(classmap.row_areas(np.zeros(1))[0])
    classified_m2 = stats["count"].to_numpy(float) * unit
    found: dict[int, np.ndarray] = {}
    for row, (values, fractions) in enumerate(zip(stats["unique"], stats["frac"], strict=True)):
        for value, fraction in zip(np.atleast_1d(values), np.atleast_1d(fractions), strict=True):
            found.setdefault(int(value), np.zeros(len(stats)))[row] = fraction * classified_m2[row]
    table = zones.reset_index(drop=True).copy()
    planar = projected.to_crs(projected.estimate_utm_crs()) if geographic else projected
    table["zone_ha"] = planar.area.to_numpy() / 1e4
    table["classified_ha"] = classified_m2 / 1e4
    for value in sorted(set(classmap.names) | set(found)):
        table[f"{classmap.name(value)}_ha"] = found.get(value, np.zeros(len(stats))) / 1e4
    return table


def write_zonal_areas(map_path: Path | str, zones_path: Path | str, out: Path | str) -> Path:
    """Write :func:`zonal_areas` as CSV (no geometry) or GeoParquet (with the zones' geometry)."""
    out = Path(out)
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise TimeSenCLIPError(f"--out {out}: end it in .csv or .parquet (GeoParquet)")
    table = zonal_areas(map_path, zones_path)
    if out.suffix.lower() == ".csv":
        table = pd.DataFrame(table.drop(columns=table.geometry.name))
    return write_table(table, out)
