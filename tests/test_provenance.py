"""Provenance records: the caller's record plus software versions, as sorted, pretty JSON."""

import dataclasses
import datetime as dt
import json
import platform
from pathlib import Path

import numpy as np

from pipeline.provenance import write_provenance


@dataclasses.dataclass
class Rule:
    item_id: str
    offset: int


def test_record_is_written_with_versions(tmp_path):
    record = {
        "workflow": {"year": 2023, "regions": ["montpellier"]},
        "checkpoint_sha256": "ab" * 32,
        "output": Path("out/land_cover.tif"),
        "items": ("S2A_1", "S2B_2"),
        "harmonization": [Rule("S2A_1", 1000)],
        "pixels": np.int64(4096),
        "started": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "package_version": "9.9.9",  # the caller's value wins over the detected one
    }
    path = write_provenance(tmp_path / "provenance.json", record)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["workflow"] == {"regions": ["montpellier"], "year": 2023}
    assert data["output"] == "out/land_cover.tif" and data["items"] == ["S2A_1", "S2B_2"]
    assert data["harmonization"] == [{"item_id": "S2A_1", "offset": 1000}]
    assert data["pixels"] == 4096 and data["started"] == "2024-01-02T03:04:05+00:00"
    assert data["package_version"] == "9.9.9"
    assert data["python_version"] == platform.python_version()
    assert data["torch_version"] and data["gdal_version"]
    assert dt.datetime.fromisoformat(data["created"]).tzinfo is not None
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]
