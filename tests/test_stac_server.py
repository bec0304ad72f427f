"""rustac-backed local STAC API over synthetic scenes."""

import datetime
import json
import urllib.error
import urllib.request

import pystac_client
import pytest

from fixtures import stac_server
from fixtures.stac_server import StacServerError, serve_stac
from fixtures.synthetic import write_synthetic_collection

DATES = [datetime.date(2022, 12, 20), datetime.date(2023, 3, 5), datetime.date(2023, 8, 20)]


@pytest.fixture(scope="module")
def served(synthetic_api):
    return synthetic_api(dates=DATES, shape=(16, 16))


def test_search_returns_the_written_items(served):
    synthetic, url = served
    client = pystac_client.Client.open(url)
    found = list(client.search(collections=["sentinel-2-l2a"], limit=2).items())
    assert sorted(item.id for item in found) == sorted(item["id"] for item in synthetic.items)
    first = next(item for item in found if item.id == synthetic.items[0]["id"])
    assert first.assets["scl"].href == synthetic.items[0]["assets"]["scl"]["href"]
    assert first.properties["s2:processing_baseline"] == "05.09"


def test_bbox_and_datetime_filter(served):
    synthetic, url = served
    client = pystac_client.Client.open(url)
    lon_min, lat_min, lon_max, lat_max = synthetic.items[0]["bbox"]
    inside = (lon_min, lat_min, lon_max, lat_max)
    in_2023 = client.search(bbox=inside, datetime="2023-01-01T00:00:00Z/2023-12-31T23:59:59Z")
    assert {item.id for item in in_2023.items()} == {item["id"] for item in synthetic.items[1:]}
    elsewhere = client.search(bbox=(lon_max + 1, lat_min, lon_max + 2, lat_max))
    assert list(elsewhere.items()) == []


def test_server_is_stopped_on_exit(tmp_path):
    synthetic = write_synthetic_collection(tmp_path / "data", dates=DATES[:1], shape=(8, 8))
    with serve_stac(synthetic.collection, synthetic.items, tmp_path / "api") as url:
        with urllib.request.urlopen(url + "/collections") as response:
            ids = [c["id"] for c in json.load(response)["collections"]]
        assert ids == ["sentinel-2-l2a"]
    assert (tmp_path / "api" / "items.ndjson").read_text().count("\n") == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/", timeout=2)


def test_invalid_input_is_a_clear_error(tmp_path):
    orphan = {"type": "Feature", "id": "orphan"}  # rustac refuses items without a collection
    with (
        pytest.raises(StacServerError, match=r"exited with status 1.*item without a collection"),
        serve_stac({"type": "Collection", "id": "c"}, [orphan], tmp_path),
    ):
        pass


def test_missing_rustac_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(stac_server.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(StacServerError, match="pip install rustac"), serve_stac({}, [], tmp_path):
        pass
