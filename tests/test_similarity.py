"""Similarity values and their storage: slugs, the uint8/float16 ramp, the int8 embedding rule,
colour-ramp styles and the COG/STAC metadata that say how pixel values decode."""

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.maps.cog import write_cog
from pipeline.maps.qml import ramp_qml_text
from pipeline.maps.sidecars import describe_ramp
from pipeline.maps.similarity import ScoreRamp, change, cosine, exemplar, slugify, unique_slugs
from pipeline.store.embeddings import decode_embeddings, encode_embeddings
from timesenclip.common.errors import TimeSenCLIPError

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0)


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("flooded rice paddies", "flooded_rice_paddies"),
        ("  Burnt forest (2023)! ", "burnt_forest_2023"),
        ("Gewächshäuser", "gew_chsh_user"),
        ("x" * 80, "x" * 60),
    ],
)
def test_slugs_are_file_safe(text, slug):
    assert slugify(text) == slug


def test_slugs_refuse_empty_and_colliding_texts():
    with pytest.raises(TimeSenCLIPError, match="no letter or digit"):
        slugify("!!!")
    with pytest.raises(TimeSenCLIPError, match="both give the file name 'open_water'"):
        unique_slugs(["open water", "Open-Water"])


def test_similarity_ramp_stores_cosine_as_uint8_steps():
    ramp = ScoreRamp.similarity()
    cos = np.array([-1.0, -0.504, 0.0, 0.255, 1.0, 1.3, -2.0, np.nan], np.float32)
    pixels = ramp.encode(cos)
    np.testing.assert_array_equal(pixels, [0, 50, 100, 126, 200, 200, 0, 255])
    decoded = ramp.decode(pixels)
    assert np.isnan(decoded[-1])
    np.testing.assert_allclose(decoded[:5], [-1.0, -0.5, 0.0, 0.26, 1.0], atol=1e-6)
    assert (ramp.scale, ramp.low) == (0.01, -1.0)
    assert "0 = -1" in ramp.legend() and "255 = no data" in ramp.legend()


def test_contrast_stretches_to_the_percentiles():
    values = np.linspace(0.1, 0.3, 1001, dtype=np.float32)
    values[::7] = np.nan
    ramp = ScoreRamp.similarity().stretched(values)
    low, high = np.percentile(values[np.isfinite(values)], [2, 98])
    assert ramp.contrast and math.isclose(ramp.low, low) and math.isclose(ramp.high, high)
    pixels = ramp.encode(values)
    assert pixels[np.isfinite(values) & (values <= low)].max() == 0
    assert pixels[np.isfinite(values) & (values >= high)].min() == 200
    error = np.abs(ramp.decode(pixels) - np.clip(values, low, high))
    assert np.nanmax(error) <= ramp.scale / 2 + 1e-7
    assert "2nd-98th percentile" in ramp.legend()


def test_float16_ramp_keeps_the_values():
    ramp = ScoreRamp.change(float16=True)
    values = np.array([0.0, 0.123456, 1.9, np.nan], np.float32)
    stored = ramp.encode(values)
    assert stored.dtype == np.float16 and math.isnan(ramp.nodata)
    np.testing.assert_array_equal(ramp.decode(stored), values.astype(np.float16))
    assert "scale" not in ramp.cog_style("x")


def test_cosine_change_and_exemplar():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    a[3] = np.nan
    reference = (a / np.linalg.norm(a, axis=1)[:, None]) @ (
        b[:2] / np.linalg.norm(b[:2], axis=1)[:, None]
    ).T
    np.testing.assert_allclose(cosine(a, b[:2]), reference, atol=1e-6)
    first = np.array([[3.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(
        change(first, np.array([[0.0, 2.0], [2.0, 2.0]])), [1.0, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(
        exemplar(np.array([[2.0, 0.0], [0.0, 5.0], [np.nan, 1.0]])), [0.5**0.5] * 2
    )
    with pytest.raises(TimeSenCLIPError, match="no exemplar pixel"):
        exemplar(np.full((2, 3), np.nan))


def test_int8_rule_and_its_error():
    embeddings = np.array([[3.0, 4.0, 0.0], [np.nan] * 3, [0.0] * 3, [-1e-3, 0, 0]], np.float32)
    stored = encode_embeddings(embeddings, "int8")
    np.testing.assert_array_equal(stored, [[76, 102, 0], [-128] * 3, [-128] * 3, [-127, 0, 0]])
    decoded = decode_embeddings(stored, "int8")
    np.testing.assert_allclose(decoded[0], np.array([76, 102, 0]) / 127)
    assert np.isnan(decoded[1:3]).all() and decoded[3, 0] == -1.0
    rng = np.random.default_rng(1)
    pixels, texts = rng.normal(size=(4000, 512)), rng.normal(size=(8, 512))
    error = cosine(decode_embeddings(encode_embeddings(pixels, "int8"), "int8"), texts) - cosine(
        pixels, texts
    )
    # The documented bounds: at most sqrt(D)/127, typically 1/(127 sqrt(12)).
    assert np.abs(error).max() < math.sqrt(512) / 127
    assert 0.7 < error.std() / (1 / (127 * math.sqrt(12))) < 1.3
    np.testing.assert_array_equal(
        decode_embeddings(encode_embeddings(pixels[:5], "float16"), "float16"),
        pixels[:5].astype(np.float16),
    )


def test_score_ramps_become_labelled_qgis_ramps():
    root = ET.fromstring(ramp_qml_text(ScoreRamp.similarity().qgis_ramp()))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor"
    assert (renderer.get("classificationMin"), renderer.get("classificationMax")) == ("-1", "1")
    shader = renderer.find("rastershader/colorrampshader")
    assert shader.get("colorRampType") == "INTERPOLATED"
    items = [(e.get("value"), e.get("label"), e.get("color")) for e in shader.iter("item")]
    assert items[0] == ("-1", "-1", "#440154") and items[-1] == ("1", "1", "#fde725")
    assert [v for v, _, _ in items] == ["-1", "-0.5", "0", "0.5", "1"]
    stretched = ScoreRamp.change().stretched(np.array([0.1, 0.2, 0.3], np.float32)).qgis_ramp()
    assert stretched.unit == "1 - cosine" and 0.1 < stretched.minimum < stretched.maximum < 0.3


@pytest.mark.parametrize("float16", [False, True])
def test_ramp_maps_carry_their_decoding(tmp_path, float16):
    ramp = ScoreRamp.similarity(float16)
    values = np.linspace(-0.5, 0.9, 300 * 300, dtype=np.float32).reshape(300, 300)
    values[:20] = np.nan
    path = write_cog(
        tmp_path / "m.tif",
        ramp.encode(values),
        transform=TRANSFORM,
        crs=32631,
        nodata=ramp.nodata,
        blocksize=128,
        **ramp.cog_style("cosine similarity to 'x'"),
    )
    describe_ramp(path, ramp, title="x", years=(2022, 2023))
    with rasterio.open(path) as src:
        pixels, overviews = src.read(1), src.overviews(1)
        decoded = pixels * src.scales[0] + src.offsets[0]
        assert src.units[0] == "cosine" and src.tags(1)["LEGEND"] == ramp.legend()
        assert src.profile["blockxsize"] == 128
    assert overviews == [2, 4]
    np.testing.assert_allclose(decoded[20:], values[20:], atol=0.005 if not float16 else 1e-3)
    band = json.loads((tmp_path / "m.json").read_text())["assets"]["data"]["raster:bands"][0]
    if float16:
        assert np.isnan(pixels[:20]).all() and band["nodata"] == "nan" and "scale" not in band
    else:
        assert (pixels[:20] == 255).all() and (band["scale"], band["offset"]) == (0.01, -1.0)
    item = json.loads((tmp_path / "m.json").read_text())["properties"]
    assert (item["start_datetime"][:4], item["end_datetime"][:4]) == ("2022", "2023")
