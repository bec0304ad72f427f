"""Region files: the Polygon and MultiPolygon geometries of a lon/lat GeoJSON file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.geo.tiles import geometry_bounds
from timesenclip.common.errors import TimeSenCLIPError


def read_geojson(path: Path) -> dict[str, Any]:
    """The Polygon/MultiPolygon geometries of a GeoJSON file as one lon/lat MultiPolygon dict."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TimeSenCLIPError(f"cannot read {path} as GeoJSON: {exc}") from None
    crs = _declared_crs(doc)
    if crs and not crs.upper().endswith(("CRS84", "4326")):
        raise TimeSenCLIPError(
            f"{path.name} declares the CRS {crs}; regions must be in lon/lat (EPSG:4326): "
            "reproject it, e.g. ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson"
        )
    polygons = []
    for geometry in _geometries(doc):
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in ("Polygon", "MultiPolygon"):
            raise TimeSenCLIPError(
                f"{path.name} holds a {kind or type(geometry).__name__} geometry; "
                "region files may hold only Polygon and MultiPolygon geometries"
            )
        coords = geometry.get("coordinates")
        polygons.extend([coords] if kind == "Polygon" else coords or [])
    if not polygons:
        raise TimeSenCLIPError(f"{path.name} holds no Polygon or MultiPolygon geometry")
    multipolygon = {"type": "MultiPolygon", "coordinates": polygons}
    try:
        geometry_bounds(multipolygon)
    except TimeSenCLIPError as exc:
        raise TimeSenCLIPError(f"{path.name}: {exc}") from None
    return multipolygon


def _declared_crs(doc: Any) -> str:
    """The name in a legacy (2008 spec) GeoJSON ``crs`` member, or "" without one."""
    try:
        return str(doc["crs"]["properties"]["name"])
    except (KeyError, TypeError):
        return ""


def _geometries(doc: Any) -> Iterator[Any]:
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        for feature in doc.get("features") or []:
            yield from _geometries(feature)
    elif kind == "Feature":
        if doc.get("geometry") is not None:  # null-geometry features carry only attributes
            yield from _geometries(doc["geometry"])
    elif kind == "GeometryCollection":
        for geometry in doc.get("geometries") or []:
            yield from _geometries(geometry)
    else:
        yield doc
