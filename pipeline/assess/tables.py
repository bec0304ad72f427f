"""Point and zone tables on disk: CSV with lon/lat columns, GeoPackage, GeoJSON, GeoParquet and
shapefiles in, GeoPackage, CSV and GeoParquet out, every write atomic."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import pandas as pd

from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TimeSenCLIPError

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".parquet", ".geoparquet")
_LON = ("lon", "longitude", "long", "x")
_LAT = ("lat", "latitude", "y")


def read_vector(path: Path | str, lon: str | None = None, lat: str | None = None):
    """A GeoDataFrame from a vector file, or from a CSV whose ``lon``/``lat`` columns (found by
    name when not given) hold WGS84 degrees."""
    path = Path(path)
    if not path.is_file():
        raise TimeSenCLIPError(f"{path} not found: pass a CSV, GeoPackage, GeoJSON or GeoParquet")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path, lon, lat)
        if suffix in (".parquet", ".geoparquet"):
            return gpd.read_parquet(path)
        if suffix in VECTOR_SUFFIXES:
            return gpd.read_file(path)
    except TimeSenCLIPError:
        raise
    except (OSError, ValueError) as err:  # the drivers' own words for a broken file
        raise TimeSenCLIPError(f"cannot read {path}: {err}") from None
    raise TimeSenCLIPError(
        f"{path}: unknown file type {suffix!r}; use .csv (lon/lat columns), .gpkg, .geojson, "
        ".shp or .parquet (GeoParquet)"
    )


def _read_csv(path: Path, lon: str | None, lat: str | None) -> gpd.GeoDataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {c.lower(): c for c in table.columns}
    lon = lon or next((columns[c] for c in _LON if c in columns), None)
    lat = lat or next((columns[c] for c in _LAT if c in columns), None)
    missing = [f"--{n} {c}" for n, c in (("lon", lon), ("lat", lat)) if c not in table.columns]
    if missing:
        raise TimeSenCLIPError(
            f"{path} has no longitude/latitude columns (it has {', '.join(table.columns)}): name "
            f"them with {' and '.join(missing)}"
        )
    xy = table[[lon, lat]].apply(pd.to_numeric, errors="coerce")
    bad = xy.isna().any(axis=1) | (xy[lat].abs() > 90) | (xy[lon].abs() > 360)
    if bad.any():
        rows = ", ".join(str(i + 2) for i in bad.to_numpy().nonzero()[0][:5])
        raise TimeSenCLIPError(
            f"{path}: {int(bad.sum())} row(s) have no valid {lon}/{lat} in degrees (file lines "
            f"{rows}...): fix or remove them"
        )
    geometry = gpd.points_from_xy(xy[lon], xy[lat])
    return gpd.GeoDataFrame(table, geometry=geometry, crs="EPSG:4326")


def write_points(table: pd.DataFrame, out: Path) -> list[Path]:
    """Write points with ``lon``/``lat`` columns as ``<out>.gpkg`` and ``<out>.csv``."""
    stem = out.with_suffix("") if out.suffix.lower() in (".gpkg", ".csv") else out
    gpkg, csv = stem.with_name(f"{stem.name}.gpkg"), stem.with_name(f"{stem.name}.csv")
    frame = gpd.GeoDataFrame(
        table, geometry=gpd.points_from_xy(table["lon"], table["lat"]), crs="EPSG:4326"
    )
    with atomic_path(gpkg) as tmp, warnings.catch_warnings():
        # The temporary name lacks the .gpkg that GDAL likes to see; the final one has it.
        warnings.filterwarnings("ignore", "The filename extension", RuntimeWarning)
        frame.to_file(tmp, driver="GPKG", layer=stem.name)
    write_table(table, csv)
    return [gpkg, csv]


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Write a table as CSV, or as (Geo)Parquet when ``path`` ends in .parquet."""
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
    return path
