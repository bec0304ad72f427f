"""A STAC item reduced, once per run, to what reading it needs: ``ItemRef``.

Parsing, asset lookup and harmonisation happen here and nowhere else; chunk tasks receive small
frozen ``ItemRef`` objects and never see an item dict, so no task can mutate what another reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pystac.utils import is_absolute_href, make_absolute_href, str_to_datetime

from encoder.conventions import BANDS
from pipeline.geo.grid import Bounds, Grid, bounds_overlap, reproject_bounds
from pipeline.search.harmonize import harmonization
from pipeline.search.stac import band_assets
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

SCL = "SCL"
ASSETS = (*BANDS, SCL)
ON_BAD_ASSET = ("raise", "skip")


class BadAssetError(TimeSenCLIPError):
    """An item's asset is missing from its STAC metadata or cannot be read."""


class HrefNotAllowedError(TimeSenCLIPError):
    """An item points to a local file outside the folders the workflow allows."""


@dataclass(frozen=True)
class AssetGrid:
    """What an asset's STAC metadata says of its file (projection extension); None: unsaid."""

    epsg: int | None = None
    transform: tuple[float, ...] | None = None
    shape: tuple[int, int] | None = None

    def check(self, crs_epsg: int | None, transform: Sequence[float], shape: tuple[int, int]):
        """Raise ``BadAssetError`` saying how a file's CRS, transform or size differ."""
        problems = []
        if self.epsg is not None and crs_epsg != self.epsg:
            problems.append(f"CRS EPSG:{crs_epsg}, not EPSG:{self.epsg}")
        if self.transform is not None and not all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
            for a, b in zip(transform[:6], self.transform, strict=True)
        ):
            problems.append(f"transform {list(transform[:6])}, not {list(self.transform)}")
        if self.shape is not None and tuple(shape) != self.shape:
            problems.append(f"size {shape[0]}x{shape[1]} px, not {self.shape[0]}x{self.shape[1]}")
        if problems:
            raise BadAssetError(
                "the file has " + "; ".join(problems) + " as its STAC metadata (proj:epsg or "
                "proj:code, proj:transform, proj:shape) says: the item and the file disagree, so "
                "it cannot be placed on the map. Fix the item or the file"
            )


@dataclass(frozen=True)
class ItemRef:
    """One Sentinel-2 scene as a read needs it: hrefs of ``ASSETS`` in order, offset, footprint.

    ``footprint`` is the scene's bounding box in ``footprint_epsg`` (its own UTM zone when the
    item says, else lon/lat), which is how stackstac decides whether a scene meets a grid.
    """

    id: str
    datetime: str
    hrefs: tuple[str, ...]
    keys: tuple[str, ...]
    offset: int
    rule: str
    footprint_epsg: int
    footprint: Bounds
    lonlat_bbox: Bounds
    bytes: int | None = None  # sum of the assets' file:size where every asset gives one
    grids: tuple[AssetGrid, ...] = ()  # per asset, what its STAC metadata says of its file

    @property
    def year(self) -> int:
        return str_to_datetime(self.datetime).year

    @property
    def month(self) -> int:
        return str_to_datetime(self.datetime).month

    def label(self, band: str) -> str:
        """``asset 'red' (B04) of item X``, for messages."""
        return f"asset {self.keys[ASSETS.index(band)]!r} ({band}) of item {self.id}"

    def meets(self, grid: Grid) -> bool:
        """Whether the scene's footprint shares an area with ``grid``."""
        return bounds_overlap(
            reproject_bounds(self.footprint, self.footprint_epsg, grid.epsg), grid.bounds
        )


def item_ref(item: Mapping, base: Path | None = None) -> ItemRef:
    """Reduce one STAC item dict; relative hrefs are taken relative to the file ``base``.

    Raises ``BadAssetError`` naming the item and what is missing when it cannot be read.
    """
    item_id = str(item.get("id", "<no id>"))
    try:
        keys = band_assets(item)
    except TimeSenCLIPError as error:
        raise BadAssetError(f"{error} {_ADVICE}") from error
    assets = item["assets"]
    hrefs = []
    for name in ASSETS:
        href = assets[keys[name]].get("href")
        if not href:
            raise BadAssetError(
                f"item {item_id} has no href for asset {keys[name]!r} ({name}). {_ADVICE}"
            )
        if base is not None and not is_absolute_href(href):
            href = make_absolute_href(href, str(base.resolve()))
        hrefs.append(href)
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise BadAssetError(f"item {item_id} has no datetime or start_datetime. {_ADVICE}")
    rule = harmonization(item)
    epsg, footprint = _footprint(item, assets[keys[BANDS[0]]])
    sizes = [assets[keys[name]].get("file:size") for name in ASSETS]
    return ItemRef(
        id=item_id,
        datetime=when,
        hrefs=tuple(hrefs),
        keys=tuple(keys[name] for name in ASSETS),
        offset=rule.offset,
        rule=rule.rule,
        footprint_epsg=epsg,
        footprint=footprint,
        lonlat_bbox=_lonlat_bbox(item, epsg, footprint),
        bytes=sum(sizes) if all(isinstance(s, int) for s in sizes) else None,
        grids=tuple(_asset_grid(assets[keys[name]], props) for name in ASSETS),
    )


def _asset_grid(asset: Mapping, props: Mapping) -> AssetGrid:
    """The asset's own projection fields over the item's (the projection extension's rule)."""
    transform = asset.get("proj:transform", props.get("proj:transform"))
    shape = asset.get("proj:shape", props.get("proj:shape"))
    return AssetGrid(
        _epsg(asset) or _epsg(props),
        None if transform is None else tuple(float(v) for v in transform[:6]),
        None if shape is None else (int(shape[0]), int(shape[1])),
    )


def check_hrefs(refs: Iterable[ItemRef], allowed: Sequence[Path]) -> None:
    """Refuse any href that is neither an http(s), s3 or gs URL nor a file in ``allowed``.

    Items come from outside (a STAC API, a file): without this, an item could have any raster on
    this machine read into the maps.
    """
    folders = [Path(folder).resolve() for folder in allowed]
    for ref in refs:
        for key, href in zip(ref.keys, ref.hrefs, strict=True):
            url = urlparse(href)
            if url.scheme.lower() in ("http", "https", "s3", "gs"):
                continue
            if url.scheme.lower() == "file":
                path = Path(unquote(url.path))
            elif url.scheme or href.startswith("/vsi"):  # ftp:, GDAL's /vsi... paths
                path = None
            else:
                path = Path(href)
            if path is not None and any(path.resolve().is_relative_to(f) for f in folders):
                continue
            where = ", ".join(str(f) for f in folders) or "none"
            raise HrefNotAllowedError(
                f"item {ref.id}, asset {key!r}: href {href} is not an http(s)://, s3:// or gs:// "
                f"URL, nor a file in a folder this workflow allows (stac.allowed_paths: {where}). "
                "If this file is meant to be read, add its folder to stac.allowed_paths in the "
                "workflow; else fix the items."
            )


def usable_refs(
    items: Iterable[Mapping], year: int, on_bad_asset: str, base: Path | None = None
) -> tuple[list[ItemRef], list[dict]]:
    """``ItemRef`` of each item of ``year``, and the skips (``{"id", "reason"}``) under "skip".

    Items outside the year are left out (logged); a bad item raises under "raise".
    """
    skipped: list[dict] = []
    refs = [usable_ref(item, year, on_bad_asset, skipped, base) for item in items]
    return [r for r in refs if r is not None], skipped


def usable_ref(
    item: Mapping, year: int, on_bad_asset: str, skipped: list[dict], base: Path | None = None
) -> ItemRef | None:
    """One item's ``ItemRef``, or None when it is outside ``year`` or bad under "skip" (then
    appended to ``skipped``); a bad item raises under "raise"."""
    try:
        ref = item_ref(item, base)
    except BadAssetError as error:
        if on_bad_asset == "raise":
            raise
        log.warning("%s Skipping the item.", error)
        skipped.append({"id": str(item.get("id")), "reason": str(error)})
        return None
    if ref.year != year:
        log.info("item %s (%s) is outside %d: left out", ref.id, ref.datetime, year)
        return None
    return ref


_ADVICE = "Set stac.on_bad_asset: skip (on_bad_asset='skip') to leave such items out."


def _epsg(fields: Mapping) -> int | None:
    code = fields.get("proj:epsg")
    if code is not None:
        return int(code)
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None


def _footprint(item: Mapping, asset: Mapping) -> tuple[int, Bounds]:
    """(EPSG, bbox) of the first band, from proj:bbox, proj:transform + shape, or ``bbox``."""
    props = item.get("properties") or {}
    epsg = _epsg(asset) or _epsg(props)
    if epsg is not None:
        bbox = asset.get("proj:bbox", props.get("proj:bbox"))
        if bbox is not None:
            return epsg, tuple(float(v) for v in bbox[:4])
        transform = asset.get("proj:transform", props.get("proj:transform"))
        shape = asset.get("proj:shape", props.get("proj:shape"))
        if transform is not None and shape is not None:
            a, _, c, _, e, f = transform[:6]
            xs, ys = (c, c + a * shape[1]), (f, f + e * shape[0])
            return epsg, (min(xs), min(ys), max(xs), max(ys))
    bbox = item.get("bbox")
    if not bbox:
        raise BadAssetError(
            f"item {item.get('id')} has no footprint: give proj:epsg with proj:bbox or "
            f"proj:transform and proj:shape, or a bbox. {_ADVICE}"
        )
    half = len(bbox) // 2  # a 3-D bbox is (west, south, low, east, north, high)
    return 4326, (bbox[0], bbox[1], bbox[half], bbox[half + 1])


def _lonlat_bbox(item: Mapping, epsg: int, footprint: Bounds) -> Bounds:
    bbox = item.get("bbox")
    if bbox:
        half = len(bbox) // 2
        return (bbox[0], bbox[1], bbox[half], bbox[half + 1])
    return reproject_bounds(footprint, epsg, 4326)
