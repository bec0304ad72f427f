"""STAC search for Sentinel-2 L2A items: a STAC API or a local file, provider conventions, retries.

``search_items`` asks a STAC API (pystac-client: follows ``next`` links, retries per
``RetryPolicy``) or reads a local JSON file, then applies the same filter to either: collection,
bbox, year and maximum cloud cover are checked on every item client-side, because some servers
(``rustac serve``, for one) ignore query extensions they do not support. The cloud-cover filter is
also sent as a ``query`` when the API declares that it supports one. Duplicates are dropped;
Planetary Computer hrefs are signed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pystac
import requests
from pystac.utils import make_absolute_href, str_to_datetime
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from encoder.conventions import BANDS
from pipeline.geo.tiles import check_bbox
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "earth-search", "planetary-computer")
# Earth Search v1 (sentinel-2-l2a and sentinel-2-c1-l2a) asset keys: common names.
EARTH_SEARCH_ASSETS: dict[str, str] = dict(
    zip(
        (*BANDS, "SCL"),
        (
            "blue",
            "green",
            "red",
            "rededge1",
            "rededge2",
            "rededge3",
            "nir",
            "nir08",
            "swir16",
            "swir22",
            "scl",
        ),
        strict=True,
    )
)
# Planetary Computer (and Earth Search v0) asset keys: the band names themselves.
PLANETARY_COMPUTER_ASSETS: dict[str, str] = {name: name for name in (*BANDS, "SCL")}
_LAYOUTS = {"Earth Search": EARTH_SEARCH_ASSETS, "Planetary Computer": PLANETARY_COMPUTER_ASSETS}


class StacError(TimeSenCLIPError):
    """A STAC source could not be read, or was described wrongly."""


class EmptySearchError(StacError):
    """A search found no usable item."""


@dataclass(frozen=True)
class RetryPolicy:
    """Every retry setting of STAC API requests, in one place.

    A request is tried at most ``attempts`` times in all: again after a status in ``statuses``,
    a dropped or refused connection, or a timeout. Waits grow as ``backoff_factor * 2 ** n``
    seconds up to ``backoff_max``; a ``Retry-After`` header is obeyed up to ``retry_after_max``.
    ``timeout`` is the connect and read limit of one request, in seconds.
    """

    attempts: int = 5
    backoff_factor: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 300.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_factor < 0 or self.timeout <= 0:
            raise StacError(
                f"retry policy {self} is not usable: attempts must be >= 1, backoff_factor >= 0 "
                "and timeout > 0."
            )

    def urllib3_retry(self) -> Retry:
        """The urllib3 ``Retry`` that pystac-client's session mounts; it logs every retry."""
        return _LoggedRetry(
            total=self.attempts - 1,
            status_forcelist=self.statuses,
            # A STAC search is a read even when it is a POST: safe to repeat.
            allowed_methods=frozenset({"GET", "POST", "HEAD"}),
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max,
            retry_after_max=int(self.retry_after_max),
            respect_retry_after_header=True,
            raise_on_status=True,
        )


class _LoggedRetry(Retry):
    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):
        retry = super().increment(method, url, response, error, *args, **kwargs)
        cause = f"HTTP {response.status}" if response is not None else repr(error)
        done = len(retry.history)
        log.warning(
            "STAC request %s %s failed (%s): retry %d of %d",
            method,
            url,
            cause,
            done,
            done + (retry.total or 0),
        )
        return retry


@dataclass(frozen=True)
class StacSource:
    """Where items come from: a STAC API ``url`` or a local ``file``, exactly one.

    ``file`` is an ItemCollection / FeatureCollection JSON, a JSON list of items, or newline-
    delimited JSON. ``provider`` "auto" means "planetary-computer" when the URL host contains
    ``planetarycomputer`` (its hrefs are then signed) and "earth-search" otherwise; set it
    explicitly for a file of Planetary Computer items that need signing. ``page_size`` is the
    ``limit`` asked of the API per page.
    """

    url: str | None = None
    file: Path | None = None
    collection: str = "sentinel-2-l2a"
    max_cloud_cover: float | None = None
    provider: str = "auto"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    page_size: int = 100

    def __post_init__(self) -> None:
        if (self.url is None) == (self.file is None):
            raise StacError(
                f"a STAC source needs exactly one of url and file, got url={self.url!r} and "
                f"file={self.file!r}."
            )
        if self.file is not None:
            object.__setattr__(self, "file", Path(self.file))
        if self.provider not in PROVIDERS:
            raise StacError(
                f"unknown STAC provider {self.provider!r}: use one of {', '.join(PROVIDERS)}."
            )
        if self.max_cloud_cover is not None and not 0 <= self.max_cloud_cover <= 100:
            raise StacError(
                f"max_cloud_cover is a percentage within 0..100, got {self.max_cloud_cover}."
            )
        if self.page_size < 1:
            raise StacError(f"page_size must be a positive number of items, got {self.page_size}.")

    @property
    def resolved_provider(self) -> str:
        """The provider "auto" stands for with this source."""
        if self.provider != "auto":
            return self.provider
        host = urlparse(self.url or "").hostname or ""
        return "planetary-computer" if "planetarycomputer" in host else "earth-search"

    @property
    def location(self) -> str:
        return self.url if self.url is not None else str(self.file)


@dataclass(frozen=True)
class _Query:
    collection: str
    bbox: tuple[float, float, float, float]
    year: int
    max_cloud_cover: float | None

    @property
    def interval(self) -> str:
        return f"{self.year}-01-01T00:00:00Z/{self.year}-12-31T23:59:59Z"

    def describe(self, source: StacSource) -> str:
        cloud = (
            "" if self.max_cloud_cover is None else f", eo:cloud_cover <= {self.max_cloud_cover}"
        )
        return (
            f"collection {self.collection!r} at {source.location}, bbox {list(self.bbox)}, "
            f"datetime {self.interval}{cloud}"
        )


def search_items(
    source: StacSource, bbox: tuple[float, float, float, float], year: int
) -> list[pystac.Item]:
    """The year's items of ``source.collection`` over ``bbox`` (lon/lat), in the order found.

    Raises ``EmptySearchError`` naming the query when nothing is left after filtering.
    """
    query = _Query(
        source.collection, check_bbox(bbox, mapped=False), _check_year(year), source.max_cloud_cover
    )
    raw = _api_items(source, query) if source.url is not None else _file_items(source.file)
    kept: dict[tuple[str | None, str], dict] = {}
    dropped: dict[str, int] = {}
    for item in raw:
        key = (item.get("collection"), str(item.get("id")))
        reason = "duplicate" if key in kept else _rejection(item, query)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            kept[key] = item
    counts = ", ".join(f"{n} {why}" for why, n in dropped.items()) or "none"
    log.info(
        "STAC search %s: %d items kept, dropped: %s", query.describe(source), len(kept), counts
    )
    if not kept:
        raise EmptySearchError(
            f"no item found for {query.describe(source)} (dropped: {counts}). Check the bbox "
            "(lon/lat: west, south, east, north), the year, the collection name and the "
            "cloud-cover limit."
        )
    # As published, not migrated: pystac's migration would turn proj:epsg into proj:code (which
    # stackstac 0.5.1 does not read) and warn about every Earth Search Collection-1 item.
    items = [
        pystac.Item.from_dict(item, preserve_dict=False, migrate=False) for item in kept.values()
    ]
    if source.url is None:
        for item in items:
            _absolute_hrefs(item, source.file)
    if source.resolved_provider == "planetary-computer":
        # Imported only here: it is slow to import and warns (pydantic v1-style config).
        import planetary_computer

        try:
            items = [planetary_computer.sign(item) for item in items]
        except requests.RequestException as error:
            raise StacError(
                f"could not sign Planetary Computer hrefs for {query.describe(source)}: {error}. "
                "Check the network, or set PC_SDK_SUBSCRIPTION_KEY."
            ) from error
    return items


def band_assets(item: pystac.Item | dict) -> dict[str, str]:
    """``{"B02": key, ..., "B12": key, "SCL": key}``: the item's asset key for each band.

    Decided per item from the asset keys it has, so Earth Search (``blue`` ... ``scl``) and
    Planetary Computer / Earth Search v0 (``B02`` ... ``SCL``) items can be mixed.
    """
    assets = item.assets if isinstance(item, pystac.Item) else item.get("assets", {})
    item_id = item.id if isinstance(item, pystac.Item) else item.get("id")
    for table in _LAYOUTS.values():
        if set(table.values()) <= set(assets):
            return dict(table)
    expected = "; ".join(f"{name}: {' '.join(t.values())}" for name, t in _LAYOUTS.items())
    raise StacError(
        f"item {item_id} has asset keys {', '.join(sorted(assets)) or '<none>'}, which match no "
        f"known Sentinel-2 L2A layout ({expected}). Search a Sentinel-2 L2A collection."
    )


def _check_year(year: int) -> int:
    if isinstance(year, bool) or not isinstance(year, int) or not 1 <= year <= 9999:
        raise StacError(f"year must be a whole year such as 2023, got {year!r}.")
    return year


def _open_client(source: StacSource) -> Client:
    """One pystac-client ``Client`` (one retrying HTTP session) for every search of a run."""
    policy = source.retry
    # Client.open resets the StacApiIO timeout to its own argument, so it is given twice.
    stac_io = StacApiIO(max_retries=policy.urllib3_retry(), timeout=policy.timeout)
    try:
        return Client.open(source.url, stac_io=stac_io, timeout=policy.timeout)
    except (APIError, requests.RequestException) as error:
        raise StacError(
            f"cannot open the STAC API at {source.url} after at most {policy.attempts} attempts: "
            f"{error}. Check the URL and the network, or retry later."
        ) from error


def _api_items(source: StacSource, query: _Query, client: Client | None = None) -> Iterator[dict]:
    """Items page by page as pystac-client follows ``next`` links; stops on a page of repeats."""
    policy = source.retry
    seen: set[tuple[Any, Any]] = set()
    try:
        client = client or _open_client(source)
        extra = {}
        if query.max_cloud_cover is not None and client.conforms_to(ConformanceClasses.QUERY):
            extra["query"] = {"eo:cloud_cover": {"lte": query.max_cloud_cover}}
        search = client.search(
            collections=[query.collection],
            bbox=query.bbox,
            datetime=query.interval,
            limit=source.page_size,
            **extra,
        )
        for number, page in enumerate(search.pages_as_dicts(), start=1):
            features = page.get("features", [])
            keys = {(f.get("collection"), f.get("id")) for f in features}
            if number > 1 and keys <= seen:
                # A server whose next link leads back to pages already read would loop forever.
                log.warning("STAC page %d of %s repeats earlier items: stop", number, source.url)
                return
            seen |= keys
            log.debug("STAC page %d of %s: %d items", number, source.url, len(features))
            yield from features
    except (APIError, requests.RequestException) as error:
        raise StacError(
            f"STAC search {query.describe(source)} failed after at most {policy.attempts} "
            f"attempts per request: {error}. Check the URL and the network, or retry later."
        ) from error


def _file_items(path: Path) -> Iterator[dict]:
    """The items of a local file one at a time: ndjson is read line by line, so a continent's
    catalogue is never held whole; JSON and stac-geoparquet are loaded, then handed out."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".geoparquet"):
            yield from _parquet_items(path)
            return
        if suffix in (".ndjson", ".jsonl", ".geojsonl"):
            with path.open() as lines:
                for line in lines:
                    if line.strip():
                        yield _feature(json.loads(line), path)
            return
        data: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StacError(f"cannot read STAC items from {path}: {error}.") from error
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list):
        _feature(data, path)  # raises
    for item in data:
        yield _feature(item, path)


def _feature(item: Any, path: Path) -> dict:
    if not (isinstance(item, dict) and item.get("type") == "Feature"):
        raise StacError(
            f"{path} holds no STAC items: give an ItemCollection / FeatureCollection, a JSON list "
            "of items, or newline-delimited items."
        )
    return item


def _parquet_items(path: Path) -> Iterator[dict]:
    """Items of a stac-geoparquet file (how large catalogues ship), a record batch at a time:
    arro3 reads the batches and rustac turns each into item dicts, so no file is held whole."""
    import rustac
    from arro3.core import Table
    from arro3.io import read_parquet

    try:
        reader = read_parquet(str(path))
        for batch in reader:
            yield from rustac.from_arrow(Table.from_batches([batch], schema=reader.schema)).get(
                "features", []
            )
    except Exception as error:  # rustac and arro3 raise their own and Arrow's errors
        raise StacError(f"cannot read stac-geoparquet items from {path}: {error}.") from error


def _rejection(item: dict, query: _Query) -> str | None:
    """Why ``item`` does not match ``query`` (a short reason for the log), or None."""
    collection = item.get("collection")
    if collection is not None and collection != query.collection:
        return "other collection"
    bbox = item.get("bbox")
    if bbox:
        half = len(bbox) // 2  # a 3-D bbox is (west, south, low, east, north, high)
        west, south, east, north = bbox[0], bbox[1], bbox[half], bbox[half + 1]
        if (
            west > query.bbox[2]
            or east < query.bbox[0]
            or south > query.bbox[3]
            or north < query.bbox[1]
        ):
            return "outside bbox"
    if not _in_year(item.get("properties", {}), query.year):
        return "outside year"
    cloud = item.get("properties", {}).get("eo:cloud_cover")
    if query.max_cloud_cover is not None and cloud is not None and cloud > query.max_cloud_cover:
        return "too cloudy"
    return None


def _in_year(props: dict, year: int) -> bool:
    start = props.get("datetime") or props.get("start_datetime")
    end = props.get("datetime") or props.get("end_datetime") or start
    if start is None:
        return True
    first = datetime.datetime(year, 1, 1, tzinfo=datetime.UTC)
    last = datetime.datetime(year, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)
    return str_to_datetime(start) <= last and str_to_datetime(end) >= first


def _absolute_hrefs(item: pystac.Item, path: Path) -> None:
    """Relative asset hrefs in a local file are relative to that file."""
    for asset in item.assets.values():
        asset.href = make_absolute_href(asset.href, str(path.resolve()))


@dataclass
class Catalog:
    """A run's search results: each distinct item once, and which items each box found.

    ``items`` hold each distinct item once as ``reduce`` made it (the raw dict by default;
    ``pipeline.plan.scenes`` keeps an ``ItemRef`` or None instead, so no dict outlives its reading);
    ``found[i]`` holds the indices into ``items`` of the ``i``-th searched box, in the order found.
    """

    items: list[Any]
    found: list[list[int]]
    base: Path | None  # the items file, for relative hrefs


def search_boxes(
    source: StacSource,
    boxes: Sequence[tuple[float, float, float, float]],
    year: int,
    *,
    concurrency: int = 8,
    reduce: Callable[[dict], Any] = lambda item: item,
) -> Catalog:
    """The year's items meeting each lon/lat box, each ``reduce``-d once when first found.

    A file is read once, item by item, against an index of the boxes: only items meeting some
    box are kept. An API is searched once per box, ``concurrency`` searches at a time, through
    one retrying session. Unlike ``search_items``, a box without items is not an error (open
    sea, say), and hrefs are left unsigned: a Planetary Computer href is signed where it is
    read, so no signature expires during a long run.
    """
    queries = [
        _Query(
            source.collection,
            check_bbox(b, mapped=False),
            _check_year(year),
            source.max_cloud_cover,
        )
        for b in boxes
    ]
    keys: dict[tuple[Any, str], int] = {}
    items: list[Any] = []

    def keep(item: dict) -> int:
        key = (item.get("collection"), str(item.get("id")))
        if key not in keys:
            keys[key] = len(items)
            items.append(reduce(item))
        return keys[key]

    found: list[list[int]] = [[] for _ in queries]
    if source.file is not None and queries:
        index = _BoxIndex([q.bbox for q in queries])
        world = _world(queries[0])
        for item in _file_items(source.file):
            if _rejection(item, world):
                continue
            meeting = index.meeting(_item_box(item))
            if len(meeting):
                k = keep(item)
                for j in meeting.tolist():
                    found[j].append(k)
    elif source.url is not None:
        client = _open_client(source)

        def search(query: _Query) -> list[dict]:
            return [i for i in _api_items(source, query, client) if not _rejection(i, query)]

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            found = [[keep(i) for i in result] for result in pool.map(search, queries)]
    log.info(
        "STAC %s: %d distinct items for %d boxes of %d",
        source.location,
        len(items),
        len(boxes),
        year,
    )
    return Catalog(items, found, source.file)


def _world(query: _Query) -> _Query:
    return dataclasses.replace(query, bbox=(-180.0, -90.0, 180.0, 90.0))


class _BoxIndex:
    """Search boxes bucketed by the whole degrees they cover: an item's bbox is checked against
    the boxes of its cells only, so reading a catalogue costs time linear in its items."""

    def __init__(self, boxes: Sequence[tuple[float, float, float, float]]) -> None:
        self.boxes = np.array(boxes, dtype=float).reshape(-1, 4)
        cells: dict[tuple[int, int], list[int]] = defaultdict(list)
        for j, box in enumerate(self.boxes.tolist()):
            for cell in _cells(box):
                cells[cell].append(j)
        self.cells = {cell: np.array(js, dtype=np.intp) for cell, js in cells.items()}

    def meeting(self, bbox: tuple[float, float, float, float] | None) -> np.ndarray:
        """Indices of the boxes ``bbox`` meets (edges included), ascending; all for None (an
        item without a bbox: the reader decides from its footprint)."""
        if bbox is None:
            return np.arange(len(self.boxes))
        parts = [self.cells[cell] for cell in _cells(bbox) if cell in self.cells]
        if not parts:
            return np.empty(0, dtype=np.intp)
        candidates = np.unique(np.concatenate(parts))
        west, south, east, north = bbox
        boxes = self.boxes[candidates]
        apart = (
            (boxes[:, 0] > east)
            | (boxes[:, 2] < west)
            | (boxes[:, 1] > north)
            | (boxes[:, 3] < south)
        )
        return candidates[~apart]


def _item_box(item: dict) -> tuple[float, float, float, float] | None:
    bbox = item.get("bbox")
    if not bbox:
        return None
    half = len(bbox) // 2
    return (bbox[0], bbox[1], bbox[half], bbox[half + 1])


def _cells(bbox: Sequence[float]) -> Iterator[tuple[int, int]]:
    west, south, east, north = bbox
    for x in range(math.floor(west), math.floor(east) + 1):
        for y in range(math.floor(south), math.floor(north) + 1):
            yield x, y
