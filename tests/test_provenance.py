"""Provenance records: the caller's record plus software versions, as sorted, pretty JSON."""

import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np

from pipeline.maps.provenance import record_outputs, verify_outputs, write_provenance


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


def test_outputs_are_recorded_and_verified(tmp_path):
    (tmp_path / "map.tif").write_bytes(b"pixels")
    (tmp_path / "map.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar belongs to its file
    (tmp_path / "map_confidence.tif").write_bytes(b"other")
    (tmp_path / "store.zarr" / "c").mkdir(parents=True)
    (tmp_path / "store.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "store.zarr" / "c" / "0").write_bytes(b"\0" * 10)
    record = record_outputs(tmp_path, [tmp_path / "map.tif", tmp_path / "store.zarr"])
    assert sorted(record) == [
        "map.tif",
        "map.tif.aux.xml",
        "store.zarr/c/0",
        "store.zarr/zarr.json",
    ]
    assert record["map.tif"]["size"] == 6
    assert record["map.tif"]["sha256"] == hashlib.sha256(b"pixels").hexdigest()
    assert verify_outputs(tmp_path, record) == []

    os.utime(tmp_path / "map.tif", ns=(0, 0))  # touched, same content: hashed and accepted
    assert verify_outputs(tmp_path, record) == []
    (tmp_path / "map.tif").write_bytes(b"PIXELS")  # same size, other content
    (tmp_path / "store.zarr" / "c" / "0").write_bytes(b"\0" * 4)
    (tmp_path / "map.tif.aux.xml").unlink()
    assert verify_outputs(tmp_path, record) == [
        "map.tif has other content than when it was written",
        "map.tif.aux.xml is missing",
        "store.zarr/c/0 has 4 bytes, not 10",
    ]


def test_verify_does_not_hash_a_file_whose_size_and_time_match(tmp_path, monkeypatch):
    from pipeline.maps import provenance

    (tmp_path / "a.tif").write_bytes(b"x" * 100)
    record = record_outputs(tmp_path, [tmp_path / "a.tif"])
    hashed = []
    monkeypatch.setattr(provenance, "file_sha256", lambda p: hashed.append(p) or "")
    assert verify_outputs(tmp_path, record) == [] and hashed == []
