"""A STAC item reduced, once per run, to what reading it needs: ``ItemRef``.

Parsing, asset lookup and harmonisation happen here and nowhere else; chunk tasks receive small
frozen ``ItemRef`` objects and never see an item dict, so no task can mutate what another reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pystac.utils import is_absolute_href, make_absolute_href, str_to_datetime

from encoder.conventions import BANDS
from encoder.errors import TimeSenCLIPError
from pipeline.grid import Bounds, Grid, bounds_overlap, reproject_bounds
from pipeline.harmonize import harmonization
from pipeline.stac import band_assets

log = logging.getLogger(__name__)

SCL = "SCL"
ASSETS = (*BANDS, SCL)
ON_BAD_ASSET = ("raise", "skip")


class BadAssetError(TimeSenCLIPError):
    """An item's asset is missing from its STAC metadata or cannot be read."""


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
