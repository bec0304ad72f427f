"""COG writers: pixels, georeferencing, palette, category names, overviews, layout, mosaics."""

import itertools
import tracemalloc
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

from pipeline.maps import cog
from pipeline.maps.cog import (
    CogError,
    class_category_names,
    class_colormap,
    confidence_percent,
    mosaic_to_cog,
    read_category_names,
    write_cog,
)
from timesenclip.common.errors import TimeSenCLIPError

CLASSES = [(1, "water", "#1f78b4"), (2, "tree cover", "#33a02c"), (3, "crops & grass", "#ffff64")]
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0)


def class_map(shape, seed=0):
    """Random classes 1..3 with some nodata pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 4, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.1] = 0
    return labels


def write_class_map(path, labels, transform=TRANSFORM, **kwargs):
    options = {
        "transform": transform,
        "crs": 32631,
        "nodata": 0,
        "colormap": class_colormap(CLASSES),
        "category_names": class_category_names(CLASSES),
        "description": "land cover",
    }
    return write_cog(path, labels, **{**options, **kwargs})


def block_mode(array, factor, nodata=0):
    """Most frequent non-nodata value of each factor x factor block (test patterns have no ties)."""
    rows, cols = array.shape[0] // factor, array.shape[1] // factor
    blocks = array.reshape(rows, factor, cols, factor).transpose(0, 2, 1, 3)
    values = np.arange(1, array.max() + 1)
    counts = (blocks.reshape(rows, cols, -1, 1) == values).sum(axis=2)
    top = np.sort(counts, axis=-1)
    assert (top[..., -1] > top[..., -2]).all(), "test pattern must not tie"
    return values[counts.argmax(axis=-1)].astype(array.dtype)


def overview(path, level):
    with rasterio.open(path, overview_level=level) as src:
        return src.read(1)


def test_class_map_round_trip(tmp_path):
    labels = class_map((40, 56))
    path = write_class_map(tmp_path / "land_cover.tif", labels)
    assert path == tmp_path / "land_cover.tif"
    with rasterio.open(path) as src:
        assert src.dtypes == ("uint8",)
        assert src.nodata == 0
        assert src.crs.to_epsg() == 32631
        assert src.transform == TRANSFORM
        assert np.array_equal(src.read(1), labels)
        assert src.descriptions == ("land cover",)
        colormap = src.colormap(1)
    assert colormap[0][3] == 0  # nodata is transparent
    assert colormap[1] == (0x1F, 0x78, 0xB4, 255)
    assert colormap[2] == (0x33, 0xA0, 0x2C, 255)
    assert colormap[3] == (0xFF, 0xFF, 0x64, 255)


def test_category_names_in_file_and_sidecar(tmp_path):
    path = write_class_map(tmp_path / "land_cover.tif", class_map((20, 20)))
    expected = ["no data", "water", "tree cover", "crops & grass"]
    assert read_category_names(path) == expected
    with rasterio.open(path) as src:
        assert src.tags(1)["CLASS_2"] == "tree cover"
    sidecar = ET.parse(tmp_path / "land_cover.tif.aux.xml").getroot()
    assert [c.text for c in sidecar.iter("Category")] == expected
    # The sidecar's colour table holds "no data" and the classes only, not 256 entries.
    entries = [tuple(int(e.get(f"c{i}")) for i in (1, 2, 3, 4)) for e in sidecar.iter("Entry")]
    assert entries == [
        (0, 0, 0, 0),
        (0x1F, 0x78, 0xB4, 255),
        (0x33, 0xA0, 0x2C, 255),
        (255, 255, 100, 255),
    ]
    with rasterio.open(path) as src:
        assert len(src.colormap(1)) == 4  # GDAL prefers the sidecar's table to the TIFF's 256
    # The attribute table has one row per class, nodata left out.
    rat = sidecar.find("PAMRasterBand/GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    assert [f.findtext("Name") for f in rat.iter("FieldDefn")] == [
        "Value",
        "Class",
        "Red",
        "Green",
        "Blue",
        "Alpha",
    ]
    rows = [[f.text for f in row.iter("F")] for row in rat.iter("Row")]
    assert rows == [
        ["1", "water", "31", "120", "180", "255"],
        ["2", "tree cover", "51", "160", "44", "255"],
        ["3", "crops & grass", "255", "255", "100", "255"],
    ]
    # GDAL itself must read them: a VRT copy carries the band's category names.
    rasterio.shutil.copy(path, tmp_path / "copy.vrt", driver="VRT")
    vrt = ET.parse(tmp_path / "copy.vrt").getroot()
    assert [c.text for c in vrt.iter("Category")] == expected


def test_cog_layout_and_internal_overviews(tmp_path):
    path = write_class_map(tmp_path / "big.tif", class_map((1100, 1300)))
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.block_shapes == [(512, 512)]
        assert src.overviews(1) == [2, 4]
        assert sorted(p.rsplit("/", 1)[-1] for p in src.files) == ["big.tif", "big.tif.aux.xml"]
    assert not list(tmp_path.glob("*.ovr"))
    assert b"LAYOUT=IFDS_BEFORE_DATA" in path.read_bytes()[:200]
    ifds, first_blocks = [], []
    for level in (None, 0, 1):
        with rasterio.open(path, overview_level=level) as src:
            ifds.append(int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1)))
            first_blocks.append(int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)))
    assert max(ifds) < min(first_blocks)  # every directory is before any pixel data
    assert first_blocks[2] < first_blocks[1] < first_blocks[0]  # smallest overview first


def test_nearest_overviews_take_the_top_left_pixel(tmp_path):
    values = (np.arange(512 * 512).reshape(512, 512) % 251 + 1).astype(np.uint8)
    path = write_class_map(tmp_path / "n.tif", values, blocksize=128, overview_resampling="nearest")
    assert np.array_equal(overview(path, 0), values[::2, ::2])
    assert np.array_equal(overview(path, 1), values[::4, ::4])


def test_mode_overviews_match_hand_computed_mode(tmp_path):
    rng = np.random.default_rng(3)
    # One dominant class per 4x4 block and one odd pixel (other class or nodata) per 2x2 block.
    labels = np.kron(rng.integers(1, 4, (128, 128)), np.ones((4, 4), int)).astype(np.uint8)
    rows, cols = np.mgrid[0:512:2, 0:512:2]
    odd_rows = rows + rng.integers(0, 2, rows.shape)
    odd_cols = cols + rng.integers(0, 2, cols.shape)
    labels[odd_rows, odd_cols] = rng.integers(0, 4, rows.shape)
    path = write_class_map(tmp_path / "m.tif", labels, blocksize=128, overview_resampling="mode")
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4]
    assert np.array_equal(overview(path, 0), block_mode(labels, 2))
    assert np.array_equal(overview(path, 1), block_mode(labels, 4))


def test_confidence_and_valid_months(tmp_path):
    confidence = np.array([[0.0, 0.504, 1.0], [np.nan, 1.7, -0.2]], np.float32)
    percent = confidence_percent(confidence)
    assert percent.dtype == np.uint8
    assert percent.tolist() == [[0, 50, 100], [255, 100, 0]]
    path = write_cog(tmp_path / "c.tif", percent, transform=TRANSFORM, crs="EPSG:32631", nodata=255)
    with rasterio.open(path) as src:
        assert src.nodata == 255 and np.array_equal(src.read(1), percent)
        with pytest.raises(ValueError):
            src.colormap(1)
    months = np.array([[0, 12], [5, 7]], np.uint8)
    path = write_cog(
        tmp_path / "valid_months.tif", months, transform=TRANSFORM, crs=32631, nodata=None
    )
    with rasterio.open(path) as src:
        assert src.nodata is None and np.array_equal(src.read(1), months)


def test_float_maps_keep_nan_and_use_float_predictor(tmp_path):
    values = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20)
    values[0, 0] = np.nan
    path = write_cog(tmp_path / "f.tif", values, transform=TRANSFORM, crs=32631, nodata=np.nan)
    with rasterio.open(path) as src:
        assert np.isnan(src.nodata)
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        assert np.array_equal(src.read(1), values, equal_nan=True)


@pytest.mark.parametrize(
    ("array", "kwargs", "message"),
    [
        (np.zeros((2, 3, 3), np.uint8), {}, "2-D array"),
        (np.zeros((3, 3), np.uint8), {"nodata": 300}, "does not fit"),
        (np.zeros((3, 3), np.uint8), {"nodata": np.nan}, "NaN"),
        (np.zeros((3, 3), np.float32), {"colormap": {1: (1, 2, 3, 255)}}, "colour table"),
        (np.zeros((3, 3), np.uint8), {"overview_resampling": "bogus"}, "overview_resampling"),
        (np.zeros((3, 3), np.uint8), {"blocksize": 100}, "multiple of 16"),
        (np.zeros((3, 3), np.uint8), {"blocksize": 64}, "from 128 up"),
    ],
)
def test_bad_input_is_rejected_before_writing(tmp_path, array, kwargs, message):
    options = {"transform": TRANSFORM, "crs": 32631, "nodata": 0, **kwargs}
    with pytest.raises(CogError, match=message) as raised:
        write_cog(tmp_path / "x.tif", array, **options)
    assert isinstance(raised.value, TimeSenCLIPError)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_map(tmp_path, monkeypatch):
    old = class_map((20, 20), seed=1)
    path = write_class_map(tmp_path / "land_cover.tif", old)

    def broken(self, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cog._Style, "apply", broken)
    with pytest.raises(OSError, match="disk full"):
        write_class_map(path, class_map((20, 20), seed=2))
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(1), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "land_cover.tif",
        "land_cover.tif.aux.xml",
    ]


def test_rewrite_without_categories_removes_stale_sidecar(tmp_path):
    path = write_class_map(tmp_path / "x.tif", class_map((8, 8)))
    write_cog(path, class_map((8, 8)), transform=TRANSFORM, crs=32631, nodata=0)
    assert not (tmp_path / "x.tif.aux.xml").exists()
    assert read_category_names(path) == []


def split_into_tiles(tmp_path, labels, rows=(0, 130), cols=(0, 250)):
    """Cut ``labels`` at the given offsets into tiles written as COGs; returns their paths."""
    row_edges, col_edges = [*rows, labels.shape[0]], [*cols, labels.shape[1]]
    paths = []
    for r0, r1 in itertools.pairwise(row_edges):
        for c0, c1 in itertools.pairwise(col_edges):
            transform = TRANSFORM @ Affine.translation(c0, r0)
            tile = tmp_path / f"tile_{r0}_{c0}.tif"
            paths.append(write_class_map(tile, labels[r0:r1, c0:c1], transform, blocksize=128))
    return paths


def test_mosaic_of_four_tiles_equals_one_write(tmp_path):
    labels = class_map((300, 400))
    whole = write_class_map(
        tmp_path / "whole.tif", labels, blocksize=128, overview_resampling="mode"
    )
    tiles = split_into_tiles(tmp_path / "tiles", labels)
    out = tmp_path / "out" / "land_cover.tif"
    mosaic_to_cog(tiles[::-1], out, overview_resampling="mode", blocksize=128)
    with rasterio.open(out) as got, rasterio.open(whole) as want:
        assert got.transform == want.transform and got.crs == want.crs
        assert got.shape == want.shape and got.nodata == want.nodata == 0
        assert np.array_equal(got.read(1), labels)
        assert got.colormap(1) == want.colormap(1)
        assert got.descriptions == ("land cover",)
        assert got.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert got.overviews(1) == want.overviews(1) == [2, 4]
    for level in (0, 1):
        assert np.array_equal(overview(out, level), overview(whole, level))
    assert read_category_names(out) == read_category_names(whole)
    assert (tmp_path / "out" / "land_cover.tif.aux.xml").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "land_cover.tif",
        "land_cover.tif.aux.xml",
    ]


def test_mosaic_fills_gaps_with_nodata_and_can_restyle(tmp_path):
    labels = class_map((40, 40))
    tiles = split_into_tiles(tmp_path, labels, rows=(0, 20), cols=(0, 20))
    out = mosaic_to_cog(tiles[:3], tmp_path / "m.tif", category_names=["none", "a", "b", "c"])
    with rasterio.open(out) as src:
        got = src.read(1)
    assert np.array_equal(got[:20], labels[:20])
    assert np.array_equal(got[20:, :20], labels[20:, :20])
    assert (got[20:, 20:] == 0).all()
    assert read_category_names(out) == ["none", "a", "b", "c"]


def test_mosaic_rejects_misaligned_tiles(tmp_path):
    labels = class_map((20, 20))
    a = write_class_map(tmp_path / "a.tif", labels)
    b = write_class_map(tmp_path / "b.tif", labels, TRANSFORM @ Affine.translation(20.5, 0))
    with pytest.raises(CogError, match="misaligned"):
        mosaic_to_cog([a, b], tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_mosaic_rejects_other_grids_and_overlaps(tmp_path):
    labels = class_map((20, 20))
    a = write_class_map(tmp_path / "a.tif", labels)
    other_zone = write_class_map(tmp_path / "z.tif", labels, crs=32632)
    coarse = write_class_map(tmp_path / "r.tif", labels, TRANSFORM @ Affine.scale(2))
    overlapping = write_class_map(tmp_path / "o.tif", labels, TRANSFORM @ Affine.translation(10, 0))
    for other, message in [
        (other_zone, "one UTM zone"),
        (coarse, "pixel size"),
        (overlapping, "overlap"),
    ]:
        with pytest.raises(CogError, match=message):
            mosaic_to_cog([a, other], tmp_path / "m.tif")
    with pytest.raises(CogError, match="no tiles"):
        mosaic_to_cog([], tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_mosaic_memory_stays_at_block_scale(tmp_path):
    labels = class_map((1536, 1536))
    tiles = split_into_tiles(tmp_path, labels, rows=(0, 768), cols=(0, 768))
    del labels
    tracemalloc.start()
    try:
        mosaic_to_cog(tiles, tmp_path / "m.tif")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # one whole tile would be 576 KiB; a 128 x 128 block is 16 KiB


def test_pieces_without_overviews(tmp_path):
    array = np.arange(600 * 600, dtype=np.uint32).reshape(600, 600).astype(np.uint8)
    transform = Affine(10, 0, 500000, 0, -10, 4800000)
    with_ov = write_cog(tmp_path / "a.tif", array, transform=transform, crs=32631, nodata=None)
    piece = write_cog(
        tmp_path / "b.tif", array, transform=transform, crs=32631, nodata=None, overviews=False
    )
    with rasterio.open(with_ov) as a, rasterio.open(piece) as b:
        assert a.overviews(1) == [2] and b.overviews(1) == []
        np.testing.assert_array_equal(b.read(1), array)
        assert b.transform == transform and b.profile["tiled"]
