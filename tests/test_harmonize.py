"""BOA offset rule on real Earth Search and Planetary Computer items, and its edge cases."""

import copy
import json
import logging

import pystac
import pytest

from pipeline.search.harmonize import Harmonization, harmonization


def _items(path):
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return data
    return data["features"] if data["type"] == "FeatureCollection" else [data]


@pytest.mark.parametrize(
    ("name", "count", "offset", "rule"),
    [
        # Earth Search v1 sentinel-2-l2a: the provider already removed the +1000.
        (
            "earth_search_v1/S2A_13TDE_20231008_0_L2A.json",
            1,
            0,
            "baseline 05.09, earthsearch:boa_offset_applied true: 0",
        ),
        (
            "earth_search_v1/S2B_20EPT_20250731_0_L2A.json",
            1,
            0,
            "baseline 05.11, earthsearch:boa_offset_applied true: 0",
        ),
        # Earth Search v1 Collection-1: no flag, DN keep the +1000.
        (
            "earth_search_v1/S2B_T20EPT_20250731T131905_L2A.json",
            1,
            1000,
            "baseline 05.11 >= 04.00, earthsearch:boa_offset_applied absent: -1000",
        ),
        # Planetary Computer publishes no offset metadata: the baseline decides.
        (
            "planetary_computer/search_s2l2a_20190101_33items.json",
            33,
            0,
            "baseline 02.12 < 04.00: 0",
        ),
        (
            "planetary_computer/stacgeoparquet_sentinel-2-l2a-pc_4items_2024.json",
            4,
            1000,
            "baseline 05.10 >= 04.00, earthsearch:boa_offset_applied absent: -1000",
        ),
        # Earth Search v0 has only the product name, N0214.
        (
            "earth_search_v0/S2A_28QCH_20200714_0_L2A.json",
            1,
            0,
            "baseline 02.14 (from sentinel:product_id) < 04.00: 0",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Could not parse bucket:UserWarning")  # pystac storage migration
def test_real_items(realdata, name, count, offset, rule):
    items = _items(realdata / "stac" / name)
    assert len(items) == count
    for item in items:
        expected = Harmonization(item["id"], offset, rule)
        assert harmonization(item) == expected
        assert harmonization(pystac.Item.from_dict(copy.deepcopy(item))) == expected


def test_missing_property_falls_back_to_the_product_name(realdata):
    path = realdata / "stac/planetary_computer/stacgeoparquet_sentinel-2-l2a-pc_4items_2024.json"
    item = _items(path)[0]
    del item["properties"]["s2:processing_baseline"]
    result = harmonization(item)
    assert result.offset == 1000
    assert result.rule.startswith("baseline 05.10 (from s2:product_uri) >= 04.00")


def _item(**props):
    return {"id": "x", "properties": {"datetime": "2019-06-01T00:00:00Z", **props}}


def test_decided_by_metadata_never_by_date():
    old_date_new_baseline = _item(**{"s2:processing_baseline": "04.00"})
    new_date_old_baseline = _item(
        **{"s2:processing_baseline": "02.14", "datetime": "2025-06-01T00:00:00Z"}
    )
    assert harmonization(old_date_new_baseline).offset == 1000
    assert harmonization(new_date_old_baseline).offset == 0
    assert harmonization(_item(**{"s2:processing_baseline": "03.99"})).offset == 0
    assert harmonization(_item(**{"s2:processing_baseline": "4.00"})).offset == 1000


def test_flag_false_keeps_the_offset_and_flag_true_wins():
    flag_false = {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False}
    assert harmonization(_item(**flag_false)) == Harmonization(
        "x", 1000, "baseline 05.09 >= 04.00, earthsearch:boa_offset_applied false: -1000"
    )
    only_flag = harmonization(_item(**{"earthsearch:boa_offset_applied": True}))
    assert only_flag == Harmonization(
        "x", 0, "baseline unknown, earthsearch:boa_offset_applied true: 0"
    )


def test_missing_baseline_assumes_no_offset_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.search.harmonize"):
        result = harmonization(_item(**{"s2:processing_baseline": "unknown"}))
    assert result == Harmonization("x", 0, "no processing baseline found: assumed no offset, 0")
    assert "unreadable s2:processing_baseline 'unknown'" in caplog.text
    assert "item x has no processing baseline" in caplog.text
