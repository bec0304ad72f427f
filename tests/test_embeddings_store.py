"""The embeddings store as xarray reads it, in both encodings; stores of the previous layout are
read as they are and moved into the new one, data kept, when a run writes into them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
import zarr

import timesenclip
from pipeline.geo.chunks import tile_chunks
from pipeline.geo.grid import Grid
from pipeline.geo.tiles import Tile
from pipeline.store import embeddings as store_module
from pipeline.store.embeddings import (
    create_stores,
    decode_embeddings,
    encode_embeddings,
    open_store,
    upgrade_store,
    write_chunk_embeddings,
)

DIM = 8
CHUNK = 32
# Two tiles of 40 x 50 px, off the 32-px chunk grid, so the zone's array has a margin.
TILES = [
    Tile("r", 32631, 0, 0, (500100.0, 4799600.0, 500600.0, 4800000.0), (40, 50), 10.0),
    Tile("r", 32631, 1, 0, (500600.0, 4799600.0, 501100.0, 4800000.0), (40, 50), 10.0),
]
REGION = Grid(32631, (500100.0, 4799600.0, 501100.0, 4800000.0), 10.0)


def workflow(encoding: str) -> SimpleNamespace:
    """What ``create_stores`` reads of a workflow."""
    return SimpleNamespace(
        year=2023,
        outputs=SimpleNamespace(
            embeddings=encoding, blocksize=128, overview_resampling="mode", confidence=True
        ),
        model=SimpleNamespace(
            clip=SimpleNamespace(model="ViT-B-32", pretrained="openai"), checkpoint="encoder.pt"
        ),
        cube=SimpleNamespace(chunk_size=CHUNK),
    )


def region_embeddings(seed: int = 0) -> np.ndarray:
    """``(40, 100, D)`` float32 embeddings of the region, a tenth of the pixels without one."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(*REGION.shape, DIM)).astype(np.float32)
    values[rng.random(REGION.shape) < 0.1] = np.nan
    return values


def write_store(folder, encoding: str, values: np.ndarray):
    """A store as a run writes it: created once, then every chunk of every tile."""
    path = create_stores(folder, TILES, workflow(encoding), DIM, checkpoint_sha256="0" * 64)
    for tile in TILES:
        for chunk in tile_chunks(tile, CHUNK):
            window = REGION.window_of(chunk.grid)
            rows = slice(window.row_off, window.row_off + window.height)
            cols = slice(window.col_off, window.col_off + window.width)
            write_chunk_embeddings(path, chunk, values[rows, cols].reshape(-1, DIM))
    return path


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_xarray_opens_a_zone_with_its_grid_crs_and_decoded_values(tmp_path, encoding):
    values = region_embeddings()
    path = write_store(tmp_path, encoding, values)
    expected = decode_embeddings(encode_embeddings(values, encoding), encoding)

    opened = xr.open_zarr(path, group="EPSG32631")
    assert json.loads((path / "zarr.json").read_text())["consolidated_metadata"]
    assert opened["embeddings"].dims == ("y", "x", "dim") and opened.sizes["dim"] == DIM
    assert opened.chunks["y"] == (CHUNK,) * 2 and opened.chunks["x"] == (CHUNK,) * 4
    assert opened.rio.crs.to_epsg() == 32631
    assert opened.attrs["year"] == 2023 and opened.attrs["encoding"] == encoding
    assert opened.attrs["clip_model"] == "ViT-B-32" and opened.attrs["epsg"] == 32631
    row, col, height, width = opened.attrs["region_window"]
    assert (row, col, height, width) == (0, 26, 40, 100)  # 500100 is 26 px past the chunk grid
    region = opened.isel(y=slice(row, row + height), x=slice(col, col + width))
    ys, xs = REGION.centres
    np.testing.assert_array_equal(region["y"].values, ys)
    np.testing.assert_array_equal(region["x"].values, xs)
    got = region["embeddings"].values
    # int8 decodes by its CF scale_factor and _FillValue (in float64): q / 127, NaN for -128.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(opened["embeddings"].values[:, :col]).all()  # the margin holds no pixel

    kept = timesenclip.open_embeddings(path)
    np.testing.assert_array_equal(kept["embeddings"].values, expected, strict=True)
    assert kept.rio.transform() == REGION.transform and "valid_months" not in kept


def _as_previous_layout(path, folder):
    """The same store in the previous layout: one bare array per zone at the root."""
    old = folder / "embeddings.zarr"
    root = zarr.open_group(old, mode="w")
    new = zarr.open_group(path, mode="r")
    root.attrs.update(dict(new.attrs) | {"format": "timesenclip-embeddings-v2"})
    zone = new["EPSG32631"]
    array = root.create_array(
        "EPSG32631",
        shape=zone["embeddings"].shape,
        chunks=zone["embeddings"].chunks,
        dtype=zone["embeddings"].dtype,
        fill_value=zone["embeddings"].fill_value,
    )
    array[:] = zone["embeddings"][:]
    keys = ("epsg", "transform", "resolution", "encoding", "region_bounds", "region_window")
    array.attrs.update({key: zone.attrs[key] for key in (*keys, "tiles")})
    return old


def test_stores_of_the_previous_layout_open_and_are_upgraded_in_place(tmp_path, monkeypatch):
    values = region_embeddings()
    path = write_store(tmp_path / "new", "int8", values)
    old = _as_previous_layout(path, tmp_path / "old")
    expected = timesenclip.open_embeddings(path).compute()
    # Read as they are: the verbs' zones and the face alike.
    zone = open_store(old).zones[0]
    np.testing.assert_array_equal(zone.read(0, 0, *zone.shape), expected["embeddings"].values)
    np.testing.assert_array_equal(
        timesenclip.open_embeddings(old)["embeddings"], expected.embeddings
    )

    # A run resuming into one moves it into the new layout first; an upgrade cut short resumes.
    create_zone = store_module._create_zone

    def cut_short(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_create_zone", cut_short)
    with pytest.raises(KeyboardInterrupt):
        upgrade_store(old)
    assert (old / "EPSG32631.v2").is_dir()
    zone = open_store(old).zones[0]  # still the previous format, its array moved aside
    np.testing.assert_array_equal(zone.read(0, 0, *zone.shape), expected["embeddings"].values)
    monkeypatch.setattr(store_module, "_create_zone", create_zone)
    create_stores(old.parent, TILES, workflow("int8"), DIM, checkpoint_sha256="0" * 64)
    assert sorted(p.name for p in old.iterdir()) == ["EPSG32631", "zarr.json"]
    upgraded = xr.open_zarr(old, group="EPSG32631")
    assert upgraded.attrs["format"] == "timesenclip-embeddings-v3"
    assert upgraded.identical(xr.open_zarr(path, group="EPSG32631"))


def test_a_resumed_run_keeps_what_chunks_wrote(tmp_path):
    values = region_embeddings()
    path = write_store(tmp_path, "float16", values)
    create_stores(tmp_path, TILES, workflow("float16"), DIM, checkpoint_sha256="1" * 64)
    kept = timesenclip.open_embeddings(path)
    np.testing.assert_array_equal(kept["embeddings"], values.astype(np.float16).astype(np.float32))
    assert kept.attrs["checkpoint_sha256"] == "1" * 64
    # Another encoding cannot share the array: the zone starts again, empty.
    create_stores(tmp_path, TILES, workflow("int8"), DIM, checkpoint_sha256="1" * 64)
    assert np.isnan(timesenclip.open_embeddings(path)["embeddings"].values).all()
