"""Ask a kept store in words, by example, or across years: ``query``, ``similar`` and ``change``.

Every map is computed from the stored embeddings alone (no encoder pass) on the region's grid,
and written with the run's block size as a COG with a colour-ramp QGIS style, a legend in its
metadata and a STAC Item (see ``pipeline.maps.similarity`` for how values are stored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Transformer
from rasterio.features import bounds as geometry_bounds
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from pipeline.maps.classify import plan_similarity
from pipeline.maps.cog import write_cog
from pipeline.maps.sidecars import describe_ramp
from pipeline.maps.similarity import ScoreRamp, change, cosine, exemplar, slugify
from pipeline.store.embeddings import Store, Zone, open_store
from timesenclip.common.errors import TimeSenCLIPError

_EXEMPLAR_TYPES = ("Point", "MultiPoint", "Polygon", "MultiPolygon")


def query_store(
    store: Path | str,
    texts: Sequence[str],
    *,
    out_dir: Path,
    templates: str | Sequence[str] = "class_names",
    contrast: bool = False,
    float16: bool = False,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
) -> list[Path]:
    """One similarity map per text, ``out_dir/<slug>.tif`` (``_EPSG<code>`` per zone if several)."""
    kept = open_store(store)
    text_encoder = kept.text_encoder(clip_model, clip_pretrained)
    plan = plan_similarity("query", texts, templates, text_encoder)
    kept.check_targets(plan.weights, "the text embeddings")
    maps = target_maps(kept, plan.weights)
    outputs = []
    for i, (text, slug) in enumerate(zip(plan.texts, plan.slugs, strict=True)):
        outputs += write_ramp_maps(
            kept,
            [m[i] for m in maps],
            ScoreRamp.similarity(float16),
            out_dir=Path(out_dir),
            name=slug,
            title=f"{text!r} similarity {kept.year}",
            description=f"cosine similarity to {text!r}",
            contrast=contrast,
            properties={"timesenclip:text": text, "timesenclip:prompts": list(plan.prompts[i])},
        )
    return outputs


def similar_store(
    store: Path | str,
    *,
    out_dir: Path,
    point: tuple[float, float] | None = None,
    geojson: Path | None = None,
    name: str | None = None,
    contrast: bool = False,
    float16: bool = False,
) -> list[Path]:
    """Similarity to the mean embedding of exemplar pixels: one point, or a GeoJSON's features."""
    if (point is None) == (geojson is None):
        raise TimeSenCLIPError("give exactly one exemplar: --point LON,LAT or --geojson FILE.")
    kept = open_store(store)
    if point is not None:
        pixels = point_embedding(kept, *point)[None]
        what = f"the pixel at {point[0]:g}, {point[1]:g}"
        lon, lat = point
        default = (
            f"similar_{abs(lon):.5f}{'e' if lon >= 0 else 'w'}_"
            f"{abs(lat):.5f}{'n' if lat >= 0 else 's'}"
        )
        about: dict[str, Any] = {"point": list(point)}
    else:
        pixels = geojson_embeddings(kept, Path(geojson))
        what = f"the {len(pixels)} pixels of {Path(geojson).name}"
        default = f"similar_{Path(geojson).stem}"
        about = {"geojson": Path(geojson).name, "pixels": len(pixels)}
    target = exemplar(pixels)
    return write_ramp_maps(
        kept,
        [m[0] for m in target_maps(kept, target[None])],
        ScoreRamp.similarity(float16),
        out_dir=Path(out_dir),
        name=slugify(name or default),
        title=f"similarity to {what} {kept.year}",
        description=f"cosine similarity to the mean embedding of {what}",
        contrast=contrast,
        properties={"timesenclip:exemplar": about},
    )


def change_stores(
    first: Path | str,
    second: Path | str,
    *,
    out_dir: Path,
    name: str | None = None,
    contrast: bool = False,
    float16: bool = False,
) -> list[Path]:
    """Per-pixel change ``1 - cosine`` between two stores of the same grid (two years)."""
    a, b = open_store(first), open_store(second)
    check_same_grid(a, b)
    maps = []
    for zone_a, zone_b in zip(a.zones, b.zones, strict=True):
        values = np.full(zone_a.shape, np.nan, np.float32)
        for row, col, block in zone_a.blocks():
            h, w, dim = block.shape
            other = zone_b.read(row, col, h, w)
            values[row : row + h, col : col + w] = change(
                block.reshape(-1, dim), other.reshape(-1, dim)
            ).reshape(h, w)
        maps.append(values)
    years = (a.year, b.year)
    return write_ramp_maps(
        b,
        maps,
        ScoreRamp.change(float16),
        out_dir=Path(out_dir),
        name=slugify(name or f"change_{a.year}_{b.year}"),
        title=f"embedding change {a.year} to {b.year}",
        description=f"embedding change (1 - cosine) from {a.year} to {b.year}",
        contrast=contrast,
        years=(min(years), max(years)),
        valid_months=False,
        properties={"timesenclip:stores": [str(a.path), str(b.path)]},
    )


def target_maps(store: Store, targets: np.ndarray) -> list[np.ndarray]:
    """Per zone, ``(T, height, width)`` float32 cosines of every pixel with each target."""
    maps = []
    for zone in store.zones:
        values = np.full((len(targets), *zone.shape), np.nan, np.float32)
        for row, col, block in zone.blocks():
            h, w, dim = block.shape
            scores = cosine(block.reshape(-1, dim), targets)
            values[:, row : row + h, col : col + w] = scores.T.reshape(-1, h, w)
        maps.append(values)
    return maps


def write_ramp_maps(
    store: Store,
    maps: list[np.ndarray],
    ramp: ScoreRamp,
    *,
    out_dir: Path,
    name: str,
    title: str,
    description: str,
    contrast: bool,
    years: tuple[int, int] | None = None,
    valid_months: bool = True,
    properties: dict[str, Any] | None = None,
) -> list[Path]:
    """One map per zone on the store's grid and layout; ``contrast`` stretches the ramp to the
    2nd-98th percentile of the whole region (all zones)."""
    if contrast:
        ramp = ramp.stretched(np.concatenate([m[np.isfinite(m)] for m in maps]))
    out_dir.mkdir(parents=True, exist_ok=True)
    properties = {
        **(properties or {}),
        "timesenclip:checkpoint_sha256": store.attrs["checkpoint_sha256"],
        "timesenclip:clip_model": store.attrs["clip_model"],
    }
    outputs = []
    for zone, values in zip(store.zones, maps, strict=True):
        path = write_cog(
            out_dir / f"{name}{store.suffix(zone)}.tif",
            ramp.encode(values),
            transform=zone.transform,
            crs=f"EPSG:{zone.epsg}",
            nodata=ramp.nodata,
            blocksize=store.layout["blocksize"],
            **ramp.cog_style(description),
        )
        outputs += [
            path,
            *describe_ramp(
                path,
                ramp,
                title=title,
                years=years or (store.year, store.year),
                valid_months_path=store.valid_months(zone) if valid_months else None,
                properties=properties,
            ),
        ]
    return outputs


def check_same_grid(a: Store, b: Store) -> None:
    """Two stores whose pixels are the same places, made by the same encoder and text model."""
    grids_a, grids_b = [z.grid() for z in a.zones], [z.grid() for z in b.zones]
    if grids_a != grids_b:
        raise TimeSenCLIPError(
            f"{a.path} and {b.path} are on different grids (EPSG, transform, shape per zone: "
            f"{_describe_grids(a.zones)} against {_describe_grids(b.zones)}): compare runs of "
            "the same region with the same cube.resolution and cube.tile_size."
        )
    for key, what in (("checkpoint_sha256", "encoder checkpoints"), ("clip_weights", "CLIP")):
        if a.attrs[key] != b.attrs[key]:
            raise TimeSenCLIPError(
                f"{a.path} and {b.path} were made with different {what} ({a.attrs[key]} and "
                f"{b.attrs[key]}): embeddings of different models are not comparable; map both "
                "years with the same model."
            )


def _describe_grids(zones: list[Zone]) -> str:
    return "; ".join(
        f"EPSG:{z.epsg} origin ({z.transform.c:g}, {z.transform.f:g}) "
        f"{z.transform.a:g} m {z.width}x{z.height} px"
        for z in zones
    )


def point_embedding(store: Store, lon: float, lat: float) -> np.ndarray:
    """The stored embedding ``(D,)`` of the pixel holding (lon, lat)."""
    _check_lonlat(lon, lat, "the point")
    inside = False
    for zone in store.zones:
        x, y = Transformer.from_crs(4326, zone.epsg, always_xy=True).transform(lon, lat)
        col, row = ~zone.transform * (x, y)
        if 0 <= row < zone.height and 0 <= col < zone.width:
            inside = True
            embedding = zone.read(math.floor(row), math.floor(col), 1, 1)[0, 0]
            if np.isfinite(embedding).all():
                return embedding
    if inside:
        raise TimeSenCLIPError(
            f"the point {lon:g}, {lat:g} has no embedding in {store.path}: it lies outside the "
            "region's outline or on a pixel without a clear month. Pick another pixel."
        )
    raise TimeSenCLIPError(
        f"the point {lon:g}, {lat:g} lies outside {store.path} (region "
        f"{_lonlat_extent(store)}): give a point inside the mapped region, as LON,LAT."
    )


def geojson_embeddings(store: Store, path: Path) -> np.ndarray:
    """``(N, D)`` stored embeddings of every pixel under the file's points and polygons."""
    geometries = _read_exemplars(path)
    found = []
    for index, geometry in enumerate(geometries):
        pixels = [p for zone in store.zones for p in _pixels_under(zone, geometry)]
        valid = [p for p in pixels if np.isfinite(p).all(axis=1).any()]
        if not valid:
            raise TimeSenCLIPError(
                f"{path.name}: feature {index} ({geometry['type']}) covers no pixel with an "
                f"embedding in {store.path}: it lies outside the region ({_lonlat_extent(store)}), "
                "covers no pixel centre, or only pixels without a clear month."
            )
        found += valid
    rows = np.concatenate(found)
    return rows[np.isfinite(rows).all(axis=1)]


def _pixels_under(zone: Zone, geometry: dict) -> list[np.ndarray]:
    """``[(n, D)]`` embeddings of the zone's pixels under a lon/lat geometry (centres inside
    polygons, the pixel holding each point)."""
    projected = transform_geom("EPSG:4326", f"EPSG:{zone.epsg}", geometry)
    left, bottom, right, top = geometry_bounds(projected)
    window = from_bounds(left, bottom, right, top, zone.transform)
    row0, col0 = max(0, math.floor(window.row_off)), max(0, math.floor(window.col_off))
    row1 = min(zone.height, math.floor(window.row_off + window.height) + 1)
    col1 = min(zone.width, math.floor(window.col_off + window.width) + 1)
    if row0 >= row1 or col0 >= col1:
        return []
    cut = Window(col0, row0, col1 - col0, row1 - row0)
    mask = rasterize(
        [projected],
        out_shape=(cut.height, cut.width),
        transform=window_transform(cut, zone.transform),
        fill=0,
        default_value=1,
        dtype="uint8",
    ).astype(bool)
    if not mask.any():
        return []
    return [zone.read(row0, col0, cut.height, cut.width)[mask]]


def _read_exemplars(path: Path) -> list[dict]:
    """The lon/lat geometries of a GeoJSON file's features (points and polygons)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TimeSenCLIPError(f"cannot read {path} as GeoJSON: {exc}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        geometries = [f.get("geometry") for f in doc.get("features") or []]
    elif kind == "Feature":
        geometries = [doc.get("geometry")]
    else:
        geometries = [doc]
    geometries = [g for g in geometries if g is not None]
    for geometry in geometries:
        if not isinstance(geometry, dict) or geometry.get("type") not in _EXEMPLAR_TYPES:
            got = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
            raise TimeSenCLIPError(
                f"{path.name} holds a {got} geometry; exemplars are "
                f"{', '.join(_EXEMPLAR_TYPES)} geometries in lon/lat."
            )
        positions = [p[:2] for p in _positions(geometry.get("coordinates"))]
        if not positions:
            raise TimeSenCLIPError(f"{path.name} holds a {geometry['type']} without coordinates.")
        lon, lat = np.asarray(positions, dtype=float).T
        _check_lonlat(lon, lat, path.name)
    if not geometries:
        raise TimeSenCLIPError(f"{path.name} holds no geometry: add points or polygons.")
    return geometries


def _positions(coordinates: Any) -> list:
    """The [lon, lat, ...] positions nested anywhere in GeoJSON coordinates."""
    if not isinstance(coordinates, list) or not coordinates:
        return []
    if all(isinstance(v, int | float) for v in coordinates):
        return [coordinates]
    return [p for part in coordinates for p in _positions(part)]


def _check_lonlat(lon: Any, lat: Any, what: str) -> None:
    lon, lat = np.atleast_1d(lon), np.atleast_1d(lat)
    if not (np.all(np.abs(lon) <= 180) and np.all(np.abs(lat) <= 90)):
        raise TimeSenCLIPError(
            f"{what} has coordinates outside lon/lat degrees (x {lon.min():g}..{lon.max():g}, "
            f"y {lat.min():g}..{lat.max():g}): give longitude, latitude in EPSG:4326 "
            "(reproject a file with ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson)."
        )


def _lonlat_extent(store: Store) -> str:
    from rasterio.warp import transform_bounds

    parts = []
    for zone in store.zones:
        left, top = zone.transform.c, zone.transform.f
        right, bottom = zone.transform * (zone.width, zone.height)
        w, s, e, n = transform_bounds(f"EPSG:{zone.epsg}", "EPSG:4326", left, bottom, right, top)
        parts.append(f"lon {w:.5f}..{e:.5f}, lat {s:.5f}..{n:.5f}")
    return "; ".join(parts)
