"""The loopback COG server the fault tests and the cube benchmark read through."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

import numpy as np
import pytest
import rasterio
from affine import Affine

from fixtures.file_server import serve_files


@pytest.fixture
def raster(tmp_path):
    path = tmp_path / "b02.tif"
    data = np.arange(256 * 256, dtype=np.uint16).reshape(1, 256, 256)
    profile = dict(
        driver="GTiff",
        width=256,
        height=256,
        count=1,
        dtype="uint16",
        crs="EPSG:32631",
        transform=Affine(10, 0, 600000, 0, -10, 5000000),
        tiled=True,
        blockxsize=128,
        blockysize=128,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path, data


def test_ranged_reads_through_gdal_equal_the_file(raster):
    path, data = raster
    with serve_files(path.parent) as server, rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(f"/vsicurl/{server.href(path)}") as ds:
            window = ds.read(1, window=((128, 256), (0, 128)))
        request = urllib.request.Request(server.href(path), headers={"Range": "bytes=0-3"})
        with urllib.request.urlopen(request) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 0-3/{path.stat().st_size}"
            assert response.read() == path.read_bytes()[:4]
    np.testing.assert_array_equal(window, data[0, 128:, :128])
    assert server.counts[f"/{path.name}"] >= 2


@pytest.mark.parametrize("fault", ["503", "reset", "truncate"])
def test_every_request_faults_at_rate_one(raster, fault):
    path, _ = raster
    with (
        serve_files(path.parent, fault_rate=1.0, faults=[fault]) as server,
        pytest.raises((OSError, http.client.HTTPException)) as err,
        urllib.request.urlopen(server.href(path), timeout=5) as response,
    ):
        response.read()
    assert server.injected[fault] == 1
    if fault == "503":
        assert err.value.code == 503
