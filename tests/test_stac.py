"""STAC search: asset layouts, sources, paging over real response chains, retries, rustac API."""

import contextlib
import datetime
import json
import logging
from http.server import BaseHTTPRequestHandler

import pystac
import pytest

from fixtures.loopback import serve_http
from fixtures.synthetic import write_synthetic_collection
from pipeline.search.stac import (
    EARTH_SEARCH_ASSETS,
    PLANETARY_COMPUTER_ASSETS,
    EmptySearchError,
    RetryPolicy,
    StacError,
    StacSource,
    band_assets,
    search_items,
)
from timesenclip.common.errors import TimeSenCLIPError

WORLD = (-180.0, -90.0, 180.0, 90.0)
FAST = RetryPolicy(attempts=4, backoff_factor=0.01, timeout=10)


def _features(path):
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else data.get("features", [data])


# --- a loopback STAC API stub -----------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a stalled client cannot hold the stub

    def log_message(self, *args):
        pass

    def do_GET(self):
        base = self.server.base
        landing = {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "stub",
            "description": "test stub",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
            ],
            "links": [
                {"rel": "self", "href": base + "/"},
                {"rel": "root", "href": base + "/"},
                {
                    "rel": "search",
                    "href": base + "/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }
        self._send(200, landing)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.server.requests.append(body)
        answer = self.server.respond(body)
        if answer is None:  # drop the connection without a response
            self.close_connection = True
            return
        status, payload, headers = answer
        self._send(status, payload, headers)

    def _send(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def stub_api(respond):
    """A STAC API on 127.0.0.1: ``respond(body)`` answers each POST /search."""
    with serve_http(_Handler) as server:
        server.base, server.requests, server.respond = server.url, [], respond
        yield server


def _page(features, next_body=None, base=""):
    links = []
    if next_body is not None:
        links.append({"rel": "next", "href": base + "/search", "method": "POST", "body": next_body})
    return {"type": "FeatureCollection", "features": features, "links": links}


def _item(item_id, when="2023-05-01T00:00:00Z", cloud=5.0, collection="sentinel-2-l2a"):
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "geometry": None,
        "properties": {"datetime": when, "eo:cloud_cover": cloud},
        "assets": {},
        "links": [],
    }


# --- band assets and sources ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("earth_search_v1/S2A_13TDE_20231008_0_L2A.json", EARTH_SEARCH_ASSETS),
        ("earth_search_v1/S2B_20EPT_20250731_0_L2A.json", EARTH_SEARCH_ASSETS),
        ("earth_search_v1/S2B_T20EPT_20250731T131905_L2A.json", EARTH_SEARCH_ASSETS),
        (
            "planetary_computer/stacgeoparquet_sentinel-2-l2a-pc_4items_2024.json",
            PLANETARY_COMPUTER_ASSETS,
        ),
        ("planetary_computer/odcstac_site2-2020_jun_jul-35MNM.geojson", PLANETARY_COMPUTER_ASSETS),
        ("earth_search_v0/S2A_28QCH_20200714_0_L2A.json", PLANETARY_COMPUTER_ASSETS),
    ],
)
def test_band_assets_of_real_items(realdata, name, layout):
    for raw in _features(realdata / "stac" / name):
        keys = band_assets(raw)
        assert keys == layout and list(keys) == [*layout]
        assert keys["B8A"] in ("nir08", "B8A") and keys["SCL"] in ("scl", "SCL")
        item = pystac.Item.from_dict(raw, migrate=False)
        assert band_assets(item) == layout
        assert all(key in item.assets for key in keys.values())


def test_band_assets_unknown_layout_names_item_and_keys(realdata):
    naip = _features(realdata / "stac/pagination/pc_naip_chain_page1.json")[0]
    with pytest.raises(
        StacError, match=rf"item {naip['id']} has asset keys image, rendered_preview"
    ):
        band_assets(naip)


def test_provider_detection_and_source_validation(tmp_path):
    pc = StacSource(url="https://planetarycomputer.microsoft.com/api/stac/v1")
    assert pc.resolved_provider == "planetary-computer"
    es = StacSource(url="https://earth-search.aws.element84.com/v1")
    assert es.resolved_provider == "earth-search"
    local = StacSource(file=str(tmp_path / "items.json"))
    assert local.file == tmp_path / "items.json" and local.resolved_provider == "earth-search"
    forced = StacSource(url="http://127.0.0.1:1", provider="planetary-computer")
    assert forced.resolved_provider == "planetary-computer"
    for bad in (
        {},
        {"url": "http://x", "file": tmp_path},
        {"url": "http://x", "provider": "aws"},
        {"url": "http://x", "max_cloud_cover": 120},
        {"url": "http://x", "page_size": 0},
    ):
        with pytest.raises(StacError):
            StacSource(**bad)
    with pytest.raises(StacError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    "bbox", [(10, 50, 5, 51), (10, 50, 11), (200, 0, 201, 1), (0, -95, 1, 0), ("a", 0, 1, 1), None]
)
def test_bad_bbox_is_a_clear_error(tmp_path, bbox):
    # One bbox rule for regions and searches (pipeline.geo.tiles.check_bbox).
    with pytest.raises(TimeSenCLIPError, match=r"bbox|longitudes|latitudes|west must"):
        search_items(StacSource(file=tmp_path / "none.json"), bbox, 2023)


PC_IMPORT_WARNING = "ignore::DeprecationWarning:planetary_computer"  # pydantic v1-style config


@pytest.mark.filterwarnings(PC_IMPORT_WARNING)
def test_local_feature_collection_filters_and_signs(realdata, monkeypatch):
    path = realdata / "stac/planetary_computer/odcstac_site2-2020_jun_jul-35MNM.geojson"
    clear = [f["id"] for f in _features(path) if f["properties"]["eo:cloud_cover"] <= 10]
    assert 0 < len(clear) < 13
    signed = []

    def sign(item):
        signed.append(item.id)
        item = item.clone()
        for asset in item.assets.values():
            asset.href += "?signed"
        return item

    monkeypatch.setattr("planetary_computer.sign", sign)
    source = StacSource(file=path, max_cloud_cover=10, provider="planetary-computer")
    items = search_items(source, WORLD, 2020)
    assert [item.id for item in items] == clear == signed
    assert all(isinstance(item, pystac.Item) for item in items)
    assert items[0].assets["B02"].href.endswith("?signed")
    with pytest.raises(
        EmptySearchError, match="datetime 2021-01-01T00:00:00Z/2021-12-31T23:59:59Z"
    ):
        search_items(source, WORLD, 2021)


@pytest.mark.filterwarnings(PC_IMPORT_WARNING)
def test_local_file_is_not_signed_by_default(realdata, monkeypatch):
    monkeypatch.setattr("planetary_computer.sign", pytest.fail)
    path = realdata / "stac/planetary_computer/stacgeoparquet_sentinel-2-l2a-pc_4items_2024.json"
    # A JSON list of items; this bbox touches only the footprint of tile 47XMJ.
    items = search_items(StacSource(file=path), (93.8, 80.12, 94.8, 80.13), 2024)
    assert [item.id for item in items] == ["S2B_MSIL2A_20240419T095549_R122_T47XMJ_20240419T122756"]


def test_local_ndjson_with_relative_hrefs(tmp_path):
    synthetic = write_synthetic_collection(
        tmp_path / "data", dates=[datetime.date(2023, 3, 5)], shape=(8, 8)
    )
    lines = []
    for item in synthetic.items:
        for asset in item["assets"].values():
            asset["href"] = asset["href"].replace(str(tmp_path) + "/", "")
        lines.append(json.dumps(item))
    path = tmp_path / "items.ndjson"
    path.write_text("\n".join(lines) + "\n")
    (item,) = search_items(StacSource(file=path), synthetic.items[0]["bbox"], 2023)
    href = item.assets["scl"].href
    assert href == str(tmp_path / "data" / item.id / "SCL.tif")


@pytest.mark.parametrize("content", ['{"type": "Catalog", "id": "x"}', "[1, 2]", "not json"])
def test_local_file_that_holds_no_items(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(StacError, match=str(path)):
        search_items(StacSource(file=path), WORLD, 2023)
    with pytest.raises(StacError, match="cannot read"):
        search_items(StacSource(file=tmp_path / "missing.json"), WORLD, 2023)


# --- paging over real response chains ---------------------------------------------------------


def _token(body):
    return body.get("token") or body.get("next")


def _chain_responder(realdata, chain):
    """Answers each request with the MANIFEST page recorded for its token; others get no items."""
    manifest = json.loads((realdata / "stac/pagination/MANIFEST.json").read_text())[chain]
    pages = {_token(entry["request"]["body"]): entry for entry in manifest}

    def respond(body):
        entry = pages.get(_token(body))
        if entry is None:
            return 200, _page([]), {}
        page = json.loads((realdata / entry["file"]).read_text())
        for link in page.get("links", []):
            if link["rel"] == "next":
                link["href"] = respond.base + "/search"
        return 200, page, {}

    return respond, manifest


def _serve_chain(realdata, chain):
    respond, manifest = _chain_responder(realdata, chain)
    stub = stub_api(respond)
    server = stub.__enter__()
    respond.base = server.base
    return stub, server, manifest


@pytest.fixture
def chain(realdata):
    opened = []

    def start(name):
        stub, server, manifest = _serve_chain(realdata, name)
        opened.append(stub)
        return server, manifest

    yield start
    for stub in opened:
        stub.__exit__(None, None, None)


def test_paging_follows_tokens_until_no_next(chain, realdata):
    server, manifest = chain("pc_s2l2a_2021_chain")
    items = search_items(StacSource(url=server.base, retry=FAST), WORLD, 2019)
    expected = [f["id"] for entry in manifest for f in _features(realdata / entry["file"])]
    assert len(expected) == 33
    assert [item.id for item in items] == expected
    assert [_token(body) for body in server.requests] == [
        _token(entry["request"]["body"]) for entry in manifest
    ]
    # "merge": true keeps the original query beside the token.
    assert server.requests[1]["collections"] == ["sentinel-2-l2a"]
    assert server.requests[0]["datetime"] == "2019-01-01T00:00:00Z/2019-12-31T23:59:59Z"


def test_paging_stops_on_an_empty_page_and_filters_collections(chain):
    server, manifest = chain("es_v1_multi_collections")
    items = search_items(StacSource(url=server.base, retry=FAST), WORLD, 2023)
    assert [item.id for item in items] == ["S2A_13TDE_20231008_0_L2A"]  # Landsat dropped
    assert len(server.requests) == 2
    # "merge": false sends the next link's body alone.
    assert server.requests[1] == manifest[1]["request"]["body"]


def test_paging_keeps_the_collection_asked_for(chain, realdata, caplog):
    server, manifest = chain("es_v1_filter")
    source = StacSource(url=server.base, collection="sentinel-2-c1-l2a", retry=FAST)
    with caplog.at_level(logging.INFO, logger="pipeline.search.stac"):
        items = search_items(source, WORLD, 2025)
    features = [f for entry in manifest for f in _features(realdata / entry["file"])]
    expected = [f["id"] for f in features if f["collection"] == "sentinel-2-c1-l2a"]
    assert 0 < len(expected) < len(features)
    assert [item.id for item in items] == expected
    # The recorded chain ends after two pages: the third token gets an empty page.
    assert len(server.requests) == 3
    assert f"{len(features) - len(expected)} other collection" in caplog.text


def test_paging_deduplicates_and_stops_on_repeated_pages(realdata, caplog):
    first, second = (
        _features(realdata / f"stac/pagination/pc_s2l2a_2021_chain_page{n}.json") for n in (1, 2)
    )

    def overlapping(body):
        if _token(body) is None:
            return 200, _page(first, {"token": "two"}, server.base), {}
        return 200, _page(first[-3:] + second), {}

    with stub_api(overlapping) as server:
        items = search_items(StacSource(url=server.base, retry=FAST), WORLD, 2019)
    assert [item.id for item in items] == [f["id"] for f in first + second]

    def looping(body):
        return 200, _page(first, {"token": "again"}, server.base), {}

    with (
        stub_api(looping) as server,
        caplog.at_level(logging.WARNING, logger="pipeline.search.stac"),
    ):
        items = search_items(StacSource(url=server.base, retry=FAST), WORLD, 2019)
    assert [item.id for item in items] == [f["id"] for f in first]
    assert len(server.requests) == 2
    assert "repeats earlier items" in caplog.text


# --- retries ----------------------------------------------------------------------------------


def _scripted(*answers):
    """Answers requests in turn; the last answer repeats."""
    calls = iter(answers)
    last = [None]

    def respond(body):
        last[0] = next(calls, last[0])
        return last[0]

    return respond


OK = (200, _page([_item("a"), _item("b", cloud=80.0)]), {})


def test_retries_on_503_and_429_then_succeeds(caplog):
    respond = _scripted(
        (503, {"detail": "busy"}, {}),
        (503, {"detail": "busy"}, {"Retry-After": "0"}),
        (429, {"detail": "slow down"}, {"Retry-After": "0"}),
        OK,
    )
    with (
        stub_api(respond) as server,
        caplog.at_level(logging.WARNING, logger="pipeline.search.stac"),
    ):
        source = StacSource(url=server.base, max_cloud_cover=50, retry=FAST)
        items = search_items(source, WORLD, 2023)
    assert [item.id for item in items] == ["a"]  # "b" is too cloudy
    assert len(server.requests) == 4
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3
    assert "HTTP 503" in retries[0] and "retry 1 of 3" in retries[0]
    assert "HTTP 429" in retries[2] and "retry 3 of 3" in retries[2]


def test_dropped_connection_is_retried(caplog):
    with stub_api(_scripted(None, OK)) as server, caplog.at_level(logging.WARNING):
        items = search_items(StacSource(url=server.base, retry=FAST), WORLD, 2023)
    assert [item.id for item in items] == ["a", "b"]
    assert len(server.requests) == 2
    assert "retry 1 of 3" in caplog.text


def test_persistent_failure_is_a_clear_error_after_the_configured_attempts():
    policy = RetryPolicy(attempts=3, backoff_factor=0.0, timeout=10)
    with stub_api(_scripted((502, {"detail": "down"}, {}))) as server:
        with pytest.raises(StacError, match="failed after at most 3 attempts") as error:
            search_items(StacSource(url=server.base, retry=policy), WORLD, 2023)
        assert len(server.requests) == 3
    assert "collection 'sentinel-2-l2a'" in str(error.value)


def test_unreachable_api_is_a_clear_error():
    with stub_api(_scripted(OK)) as server:
        url = server.base  # the port is closed once the stub stops
    policy = RetryPolicy(attempts=2, backoff_factor=0.0, timeout=5)
    with pytest.raises(StacError, match="Check the URL and the network"):
        search_items(StacSource(url=url, retry=policy), WORLD, 2023)


# --- a real STAC API: rustac serve over synthetic COGs -----------------------------------------

DATES = [datetime.date(2022, 12, 20), *(datetime.date(2023, m, 5) for m in range(1, 7))]


@pytest.fixture(scope="module")
def rustac_api(synthetic_api):
    return synthetic_api(dates=DATES, shape=(8, 8))


def test_search_through_rustac_pages_and_filters(rustac_api, caplog):
    synthetic, url = rustac_api
    bbox = synthetic.items[0]["bbox"]
    source = StacSource(url=url, page_size=2, retry=FAST)
    items = search_items(source, bbox, 2023)
    assert [item.id for item in items] == [item["id"] for item in synthetic.items[1:]]
    assert items[0].assets["nir08"].href == synthetic.items[1]["assets"]["nir08"]["href"]
    assert items[0].properties["proj:epsg"] == synthetic.epsg  # as published, for stackstac

    clouds = {item["id"]: item["properties"]["eo:cloud_cover"] for item in synthetic.items[1:]}
    limit = sorted(clouds.values())[len(clouds) // 2]
    with caplog.at_level(logging.INFO, logger="pipeline.search.stac"):
        clear = search_items(StacSource(url=url, max_cloud_cover=limit, retry=FAST), bbox, 2023)
    assert [item.id for item in clear] == [i for i, c in clouds.items() if c <= limit]
    assert f"{sum(c > limit for c in clouds.values())} too cloudy" in caplog.text


def test_empty_search_names_the_query(rustac_api):
    synthetic, url = rustac_api
    west, south, east, north = synthetic.items[0]["bbox"]
    with pytest.raises(EmptySearchError) as error:
        search_items(StacSource(url=url, retry=FAST), (west + 1, south, east + 1, north), 2023)
    message = str(error.value)
    assert "collection 'sentinel-2-l2a'" in message and url in message
    assert "2023-01-01T00:00:00Z/2023-12-31T23:59:59Z" in message
    with pytest.raises(EmptySearchError, match="collection 'sentinel-2-c1-l2a'"):
        search_items(
            StacSource(url=url, collection="sentinel-2-c1-l2a"), (west, south, east, north), 2023
        )
