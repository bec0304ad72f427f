"""Input conventions: validation, overrides, their effect on normalize, and their round trip
through our checkpoint format and the pipeline's loader."""

import numpy as np
import pytest
import torch

from encoder.checkpoint import convert_checkpoint, load_encoder, save_checkpoint
from encoder.conventions import (
    B4_FIRST,
    BANDS,
    HIGH,
    LOW,
    ConventionOverrides,
    Conventions,
    ConventionsError,
    band_name,
)
from encoder.preprocess import normalize
from fixtures.tiny import tiny_encoder
from pipeline.cli import main
from pipeline.maps.pixel_encoder import cached_encoder, pixel_series
from pipeline.workflow.schema import ModelConfig

REFERENCE_CHANNELS = ["B4", "B3", "B2", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


def test_band_names_and_orders():
    assert [band_name(b) for b in ("B4", "b04", "B8A", "b8a", "B12", b"B2")] == [
        "B04",
        "B04",
        "B8A",
        "B8A",
        "B12",
        "B02",
    ]
    for bad in ("B13", "B8B", "red", "B"):
        with pytest.raises(ConventionsError, match="is not a Sentinel-2 band"):
            band_name(bad)
    assert Conventions.published(REFERENCE_CHANNELS).band_order == B4_FIRST
    with pytest.raises(ConventionsError, match="each of the 10 bands"):
        Conventions(band_order=BANDS[:9])
    with pytest.raises(ConventionsError, match="each of the 10 bands"):
        Conventions(band_order=("B02", *BANDS[:9]))


def test_defaults_are_the_published_conventions():
    c = Conventions()
    assert (c.band_order, c.low, c.high, c.clamp) == (BANDS, LOW, HIGH, True)
    assert (c.single_token_position, c.composite) == ("mean", "masked_median")
    assert c.band_index == tuple(range(10)) and c.constants_order() == BANDS
    with pytest.raises(ConventionsError, match="single_token_position 'july'"):
        Conventions(single_token_position="july")
    with pytest.raises(ConventionsError, match="composite 'max'"):
        Conventions(composite="max")
    with pytest.raises(ConventionsError, match="high must be positive"):
        Conventions(high=(0.0,) * 10)


def test_constants_follow_the_bands_they_name():
    b4 = Conventions.published(B4_FIRST)
    assert b4.low[:3] == (LOW[2], LOW[1], LOW[0]) and b4.high[:3] == (HIGH[2], HIGH[1], HIGH[0])
    assert b4.low[3:] == LOW[3:] and b4.band_index[:4] == (2, 1, 0, 3)
    mixed = Conventions.published(BANDS, B4_FIRST)  # the reference's 1x1 dataset
    assert mixed.band_order == BANDS and mixed.low == b4.low
    assert mixed.constants_order() == B4_FIRST
    assert "constants: those of B04 B03 B02" in mixed.describe()
    assert "constants: each band's own" in b4.describe()
    assert Conventions(low=(1.0,) * 10).constants_order() is None


def test_overrides_replace_only_what_they_set():
    recorded = Conventions.published(
        B4_FIRST, single_token_position="january", composite="reference"
    )
    assert recorded.override(None) is recorded and not ConventionOverrides()
    assert recorded.override(ConventionOverrides()) == recorded
    lone = recorded.override(ConventionOverrides(single_token_position="mean"))
    assert lone == Conventions.published(B4_FIRST, composite="reference")
    bands = recorded.override(ConventionOverrides(band_order=tuple(BANDS)))
    assert bands.band_order == BANDS and bands.low == LOW  # constants follow the new order
    assert bands.single_token_position == "january"
    constants = recorded.override(ConventionOverrides(constants_order=BANDS))
    assert constants.band_order == B4_FIRST and constants.low == LOW
    with pytest.raises(ConventionsError, match="'B1' is not"):
        ConventionOverrides(band_order=("B1",) * 10)
    with pytest.raises(ConventionsError, match="single_token_position 'july'"):
        ConventionOverrides(single_token_position="july")
    assert hash(ConventionOverrides(band_order=tuple(REFERENCE_CHANNELS))) is not None


def test_to_dict_round_trip():
    c = Conventions.published(BANDS, B4_FIRST, single_token_position="january")
    record = c.to_dict()
    assert isinstance(record["band_order"], list) and record["low"][0] == LOW[2]
    assert Conventions.from_dict(record | {"unknown": 1}) == c


def test_normalize_reorders_bands_and_uses_each_channels_constants():
    rng = np.random.default_rng(0)
    dn = rng.uniform(0, 6000, size=(7, 12, 10)).astype(np.float32)
    dn[0, 3, 0] = np.nan  # B02 is the third channel of the B4-first order
    b4 = Conventions.published(B4_FIRST)
    out = normalize(dn, conventions=b4)
    index = [BANDS.index(b) for b in B4_FIRST]
    expected = np.clip((dn[..., index] - np.array(b4.low)) / np.array(b4.high), 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)
    # The first channel is B04 with B04's own constants: the same values as B04 by default.
    np.testing.assert_allclose(out[..., 0], normalize(dn)[..., 2], rtol=1e-6, equal_nan=True)
    assert np.isnan(out[0, 3, 2]) and np.isfinite(out[0, 3, [0, 1, *range(3, 10)]]).all()
    torch_out = normalize(torch.from_numpy(dn), conventions=b4)
    np.testing.assert_allclose(torch_out.numpy(), out, rtol=1e-6, equal_nan=True)
    mixed = normalize(dn, conventions=Conventions.published(BANDS, B4_FIRST))
    np.testing.assert_allclose(
        mixed[..., 0], np.clip((dn[..., 0] - LOW[2]) / HIGH[2], 0, 1), rtol=1e-6, equal_nan=True
    )
    unclamped = normalize(np.full((1, 10), 1e5), conventions=Conventions(clamp=False))
    assert (unclamped > 1).all()
    cube = rng.uniform(0, 5000, size=(10, 4, 3))
    np.testing.assert_allclose(
        normalize(cube, band_axis=0, conventions=b4),
        normalize(cube.transpose(1, 2, 0), conventions=b4).transpose(2, 0, 1),
    )


def test_checkpoint_records_and_restores_conventions(tmp_path):
    model = tiny_encoder(dim=16, heads=8)
    model.conventions = Conventions.published(B4_FIRST, single_token_position="january")
    loaded = load_encoder(save_checkpoint(model, tmp_path / "ours.pt"))
    assert loaded.conventions == model.conventions
    assert loaded.metadata.conventions == model.conventions
    x = torch.rand(5, 1, 10)
    torch.testing.assert_close(loaded(x), model(x))
    torch.save(model.state_dict(), tmp_path / "published.pt")  # no metadata: the defaults
    assert load_encoder(tmp_path / "published.pt").conventions == Conventions()


def test_convert_writes_the_chosen_conventions(tmp_path):
    model = tiny_encoder(dim=16, heads=8)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "published.ckpt")
    chosen = ConventionOverrides(band_order=B4_FIRST, single_token_position="january")
    path = convert_checkpoint(tmp_path / "published.ckpt", tmp_path / "ours.pt", chosen)
    loaded = load_encoder(path)
    assert loaded.conventions == Conventions.published(B4_FIRST, single_token_position="january")
    assert loaded.metadata.clip_model == "ViT-B-32"  # published defaults for the rest
    again = convert_checkpoint(
        path, tmp_path / "again.pt", ConventionOverrides(composite="reference")
    )
    assert load_encoder(again).conventions == loaded.conventions.override(
        ConventionOverrides(composite="reference")
    )
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


def test_workflow_overrides_reach_normalize(tmp_path):
    """A workflow's model.band_order reaches the pipeline's normalisation through the loader."""
    model = tiny_encoder(dim=16, heads=8)
    torch.save(model.state_dict(), tmp_path / "published.pt")
    config = ModelConfig.model_validate(
        {
            "checkpoint": str(tmp_path / "published.pt"),
            "band_order": REFERENCE_CHANNELS,
            "single_token_position": "january",
        }
    )
    assert config.band_order == list(B4_FIRST)
    overrides = ConventionOverrides(
        band_order=tuple(config.band_order), single_token_position=config.single_token_position
    )
    loaded = cached_encoder(config.checkpoint, "cpu", overrides)
    assert loaded is cached_encoder(config.checkpoint, "cpu", overrides)  # cached per overrides
    assert cached_encoder(config.checkpoint, "cpu").conventions == Conventions()
    assert loaded.conventions == Conventions.published(B4_FIRST, single_token_position="january")
    composite = np.random.default_rng(1).uniform(100, 5000, (12, 10, 3, 2)).astype(np.float32)
    series, present = pixel_series(composite, loaded.conventions)
    flat = composite.reshape(12, 10, 6).transpose(2, 0, 1)
    np.testing.assert_allclose(series[..., 0], np.clip((flat[..., 2] - LOW[2]) / HIGH[2], 0, 1))
    np.testing.assert_array_equal(series, normalize(flat, conventions=loaded.conventions))
    assert present.all()
    with pytest.raises(ValueError, match="must name each of the 10 bands"):
        ModelConfig.model_validate({"checkpoint": config.checkpoint, "band_order": ["B4", "B3"]})


def test_convert_command_and_its_errors(tmp_path, capsys):
    torch.save(tiny_encoder(dim=16, heads=8).state_dict(), tmp_path / "published.pt")
    out = tmp_path / "ours.pt"
    argv = ["convert", str(tmp_path / "published.pt"), "--out", str(out)]
    assert main([*argv, "--band-order", *REFERENCE_CHANNELS, "--constants-order", "B2,B3,B4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "each of the 10 bands" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*argv, "--band-order", *REFERENCE_CHANNELS, "--composite", "reference"]) == 0
    assert "bands B04 B03 B02" in capsys.readouterr().out
    assert load_encoder(out).conventions == Conventions.published(B4_FIRST, composite="reference")
