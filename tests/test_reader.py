"""Aligned grids are read plainly, and give exactly what a WarpedVRT onto the grid gives."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.cube import reader
from pipeline.cube.reader import DatasetPool, read_band
from pipeline.geo.grid import Grid


def _write(path, res: float, shape: tuple[int, int], nodata: int | None) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 50, shape, dtype=np.uint16)  # zeros: nodata where nodata = 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=shape[1],
        height=shape[0],
        count=1,
        dtype="uint16",
        crs="EPSG:32631",
        transform=Affine(res, 0, 500000.0, 0, -res, 4800000.0),
        nodata=nodata,
    ) as dst:
        dst.write(data, 1)


def _vrt_read(path, grid: Grid, window: Window) -> np.ndarray:
    height, width = grid.shape
    with (
        rasterio.open(path) as ds,
        WarpedVRT(
            ds,
            crs=grid.epsg,
            transform=grid.transform,
            height=height,
            width=width,
            resampling=Resampling.nearest,
            add_alpha=ds.nodata is None,
        ) as vrt,
    ):
        data = vrt.read(window=window, out_dtype=np.float32, masked=True)
    data = np.ma.masked_array(data[0], mask=data[1] == 0) if data.shape[0] == 2 else data[0]
    return np.ma.filled(data, np.float32(np.nan))


@pytest.mark.parametrize("res", [10.0, 20.0])
@pytest.mark.parametrize("nodata", [0, None])
@pytest.mark.parametrize(
    "origin, window",
    [
        ((0, 0), Window(0, 0, 40, 40)),
        ((3, 5), Window(7, 1, 33, 29)),
        ((-9, -13), Window(0, 0, 40, 40)),
    ],
)
def test_plain_read_equals_warped_vrt(tmp_path, monkeypatch, res, nodata, origin, window):
    path = tmp_path / "band.tif"
    _write(path, res, (30, 30), nodata)
    # A grid starting at odd 10 m pixels (half a 20 m pixel), or partly beyond the file.
    left, top = 500000.0 + 10 * origin[1], 4800000.0 - 10 * origin[0]
    grid = Grid(32631, (left, top - 500.0, left + 500.0, top), 10.0)
    built = []
    monkeypatch.setattr(reader, "WarpedVRT", lambda *a, **k: built.append(1))
    got = read_band(str(path), grid, window, Resampling.nearest, pool=DatasetPool())
    assert not built  # read plainly
    want = _vrt_read(path, grid, window)
    assert got.shape == (window.height, window.width)
    np.testing.assert_array_equal(got, want)  # NaN in the same places, values bit-identical
    assert np.isfinite(got).any()


def test_unaligned_grid_goes_through_warped_vrt(tmp_path):
    path = tmp_path / "band.tif"
    _write(path, 20.0, (30, 30), 0)
    grid = Grid(32631, (500005.0, 4799500.0, 500505.0, 4800000.0), 10.0)  # half a pixel off
    window = Window(0, 0, 50, 50)
    got = read_band(str(path), grid, window, Resampling.nearest, pool=DatasetPool())
    np.testing.assert_array_equal(got, _vrt_read(path, grid, window))
    bilinear = read_band(str(path), grid.window(0, 0, 50, 50), None, Resampling.bilinear)
    assert bilinear.shape == (50, 50)


def test_a_chunk_builds_no_dask_graph(tmp_path, monkeypatch):
    import dask.highlevelgraph

    from fixtures.synthetic import write_synthetic_collection
    from pipeline.cube.composite import CubeOptions, composite_chunk
    from pipeline.search.items import item_ref

    written = write_synthetic_collection(tmp_path, shape=(32, 32))
    graphs = []
    init = dask.highlevelgraph.HighLevelGraph.__init__

    def counted(self, *args, **kwargs):
        graphs.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(dask.highlevelgraph.HighLevelGraph, "__init__", counted)
    grid = Grid(written.epsg, written.bounds, written.resolution)
    cube = composite_chunk([item_ref(i) for i in written.items], grid, CubeOptions())
    assert not graphs
    assert cube.composite.shape == (12, 10, 32, 32) and np.isfinite(cube.composite).any()
