"""The encoder: published layout, fast path = plain nn.TransformerEncoder, month-mask semantics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encoder.conventions import Conventions
from encoder.model import EncoderConfig, TimeSenCLIPEncoder
from timesenclip.common.errors import TimeSenCLIPError

TINY = {"dim": 32, "depth": 2, "heads": 4, "ff_dim": 16}
TOL = 1e-5


def random_encoder(seed: int = 0, **config) -> TimeSenCLIPEncoder:
    """A tiny encoder with every weight random (so positions, biases and norms all matter)."""
    torch.manual_seed(seed)
    model = TimeSenCLIPEncoder(**{**TINY, **config})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def plain_reference(model: TimeSenCLIPEncoder, x, month_mask=None, pos=None):
    """The published forward: a separately built nn.TransformerEncoder with copied weights
    (``pos``: the position rows, default the whole table)."""
    cfg = model.config
    layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.ff_dim, 0.0, batch_first=True)
    plain = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
    plain.load_state_dict(model.transformer.state_dict())
    plain.eval()
    tokens = model.spectral_embedding(x) + (model.time_pos_encoding if pos is None else pos)
    seq = torch.cat([model.time_token.expand(len(x), -1, -1), tokens], 1)
    padding = None if month_mask is None else F.pad(~month_mask, (1, 0), value=False)
    return model.mlp_head(plain(seq, src_key_padding_mask=padding)[:, 0])


def test_published_state_dict_layout():
    state = TimeSenCLIPEncoder().state_dict()
    assert len(state) == 80
    assert sum(v.numel() for v in state.values()) == 8_169_472
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["time_pos_encoding"] == (1, 12, 512)
    assert shapes["time_token"] == (1, 1, 512)
    assert shapes["spectral_embedding.1.weight"] == (512, 10)
    assert shapes["spectral_embedding.1.bias"] == (512,)
    assert shapes["mlp_head.0.weight"] == shapes["mlp_head.0.bias"] == (512,)
    assert shapes["mlp_head.1.weight"] == (512, 512)
    assert shapes["mlp_head.1.bias"] == (512,)
    for i in range(6):
        prefix = f"transformer.layers.{i}."
        assert shapes[prefix + "self_attn.in_proj_weight"] == (1536, 512)
        assert shapes[prefix + "self_attn.in_proj_bias"] == (1536,)
        assert shapes[prefix + "self_attn.out_proj.weight"] == (512, 512)
        assert shapes[prefix + "linear1.weight"] == (256, 512)
        assert shapes[prefix + "linear2.weight"] == (512, 256)
        for norm in ("norm1", "norm2"):
            assert shapes[f"{prefix}{norm}.weight"] == shapes[f"{prefix}{norm}.bias"] == (512,)
    assert not any(k.startswith("spectral_embedding.0") for k in state)


def test_config_and_bad_heads():
    model = TimeSenCLIPEncoder(**TINY)
    assert model.config == EncoderConfig(dim=32, depth=2, heads=4, ff_dim=16)
    assert model.metadata is None
    with pytest.raises(TimeSenCLIPError, match="not divisible"):
        TimeSenCLIPEncoder(dim=30, heads=4)


@pytest.mark.parametrize("grad", [False, True], ids=["inference_mode", "autograd"])
def test_fast_path_equals_plain_transformer(grad):
    model = random_encoder()
    x = torch.rand(64, 12, 10)
    mask = torch.rand(64, 12) > 0.3
    mask[:, 0] = mask[:, 5] = True  # at least two months, so positions are the months' own
    with torch.inference_mode(not grad):
        fast, fast_masked = model(x), model(x, mask)
        plain, plain_masked = plain_reference(model, x), plain_reference(model, x, mask)
        # model.transformer itself (PyTorch's own fused path in inference mode)
        seq = torch.cat([model.time_token.expand(64, -1, -1), model.embed_spectral(x)], 1)
        own = model.mlp_head(model.transformer(seq + F.pad(model.time_pos_encoding, (0, 0, 1, 0))))
    torch.testing.assert_close(fast, plain, atol=TOL, rtol=0)
    torch.testing.assert_close(fast_masked, plain_masked, atol=TOL, rtol=0)
    torch.testing.assert_close(fast, own[:, 0], atol=TOL, rtol=0)
    assert not torch.allclose(fast, fast_masked, atol=1e-3)  # the mask did something


def test_train_mode_is_plain_transformer_with_dropout():
    model = random_encoder(dropout=0.0)
    x, mask = torch.rand(16, 12, 10), torch.rand(16, 12) > 0.3
    mask[:, :2] = True
    expected = model(x, mask)
    model.train()
    torch.testing.assert_close(model(x, mask), expected, atol=TOL, rtol=0)
    dropping = random_encoder(dropout=0.5).train()
    assert not torch.equal(dropping(x), dropping(x))
    loss = dropping(x, mask).sum()
    loss.backward()
    assert dropping.time_pos_encoding.grad is not None


def test_masked_month_values_never_matter():
    model = random_encoder()
    x = torch.rand(8, 12, 10)
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[:, [2, 7]] = False
    noisy = x.clone()
    noisy[:4, 2] = float("nan")
    noisy[4:, 7] = 1e30
    torch.testing.assert_close(model(noisy, mask), model(x, mask), atol=0, rtol=0)


def test_nan_months_are_masked_automatically():
    model = random_encoder()
    x = torch.rand(8, 12, 10)
    gappy = x.clone()
    gappy[:, 4] = float("nan")
    gappy[0, 9, 3] = float("nan")  # one band missing also drops the month
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[:, 4] = False
    mask[0, 9] = False
    torch.testing.assert_close(model(gappy), model(x, mask), atol=0, rtol=0)


def test_present_months_keep_their_positions():
    model = random_encoder()
    x = torch.rand(8, 12, 10)
    keep = [m for m in range(12) if m != 3]
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[:, 3] = False
    tokens = model.embed_spectral(x[:, keep]) + model.time_pos_encoding[:, keep]
    torch.testing.assert_close(model(x, mask), model.encode_tokens(tokens), atol=TOL, rtol=0)
    shifted = model.embed_spectral(x[:, keep]) + model.time_pos_encoding[:, :11]
    assert not torch.allclose(model(x, mask), model.encode_tokens(shifted), atol=1e-3)


def test_single_month_and_annual_median_use_mean_position():
    model = random_encoder()
    x = torch.rand(8, 12, 10)
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[:, 5] = True
    mean_pos = model.time_pos_encoding.mean(1, keepdim=True)
    expected = model.encode_tokens(model.embed_spectral(x[:, [5]]) + mean_pos)
    torch.testing.assert_close(model(x, mask), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(model(x[:, [5]]), expected, atol=TOL, rtol=0)
    own_pos = model.encode_tokens(model.embed_spectral(x[:, [5]]) + model.time_pos_encoding[:, [5]])
    assert not torch.allclose(expected, own_pos, atol=1e-3)


def seasonal_positions(table):
    """The reference rule for 4 tokens, computed independently: the middle of each 3 rows."""
    return table.view(1, 4, 3, -1).sort(dim=2).values[:, :, 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_seasonal_input_takes_the_reference_positions(seed):
    model = random_encoder(seed)
    x = torch.rand(16, 4, 10)
    pos = seasonal_positions(model.time_pos_encoding)
    mask = torch.ones(16, 4, dtype=torch.bool)
    mask[:8, 1] = False
    mask[8:12, 3] = False
    with torch.no_grad():
        expected = plain_reference(model, x, pos=pos)
        torch.testing.assert_close(model(x), expected, atol=TOL, rtol=0)
        masked = plain_reference(model, x, mask, pos=pos)
        torch.testing.assert_close(model(x, mask), masked, atol=TOL, rtol=0)
        gappy = x.clone()
        gappy[:8, 1] = float("nan")
        gappy[8:12, 3] = float("nan")
        torch.testing.assert_close(model(gappy), masked, atol=TOL, rtol=0)
        # Neither a row of the table (e.g. each block's middle month) nor the block mean.
        for other in (
            model.time_pos_encoding[:, 1::3],
            model.time_pos_encoding.view(1, 4, 3, -1).mean(2),
        ):
            assert not torch.allclose(plain_reference(model, x, pos=other), expected, atol=1e-3)
        train = random_encoder(seed, dropout=0.0).train()
        torch.testing.assert_close(train(x, mask), masked, atol=TOL, rtol=0)


def test_lone_season_and_january_rule():
    model = random_encoder()
    x = torch.rand(6, 4, 10)
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[:, 2] = True
    table = model.time_pos_encoding
    mean = model.encode_tokens(model.embed_spectral(x[:, [2]]) + table.mean(1, keepdim=True))
    torch.testing.assert_close(model(x, mask), mean, atol=TOL, rtol=0)
    model.conventions = Conventions(single_token_position="january")
    january = model.encode_tokens(model.embed_spectral(x[:, [2]]) + table[:, :1])
    torch.testing.assert_close(model(x, mask), january, atol=TOL, rtol=0)
    torch.testing.assert_close(model(x[:, [2]]), january, atol=TOL, rtol=0)
    months = torch.zeros(6, 12, dtype=torch.bool)
    months[:, 7] = True  # a lone month of a monthly series takes the same rule
    x12 = torch.rand(6, 12, 10)
    lone = model.encode_tokens(model.embed_spectral(x12[:, [7]]) + table[:, :1])
    torch.testing.assert_close(model(x12, months), lone, atol=TOL, rtol=0)
    assert not torch.allclose(january, mean, atol=1e-3)


def test_pixel_without_months_is_nan_and_isolated():
    model = random_encoder()
    x = torch.rand(6, 12, 10)
    mask = torch.rand(6, 12) > 0.2
    mask[2] = False
    mask[3, :] = False
    mask[3, 1] = True  # a single-month neighbour
    out = model(x, mask)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3, 4, 5]]).all()
    alone = torch.cat([model(x[[i]], mask[[i]]) for i in (0, 1, 3, 4, 5)])
    torch.testing.assert_close(out[[0, 1, 3, 4, 5]], alone, atol=TOL, rtol=0)
    with torch.no_grad():
        model.train()
        assert torch.isnan(model(x, mask)[2]).all()


def test_padding_mask_of_encode_tokens_marks_left_out_tokens():
    model = random_encoder()
    tokens = torch.randn(4, 5, 32)
    padding = torch.tensor([[False, False, True, False, True]] * 4)
    torch.testing.assert_close(
        model.encode_tokens(tokens, padding),
        model.encode_tokens(tokens[:, [0, 1, 3]]),
        atol=TOL,
        rtol=0,
    )


def test_patch_input_k5():
    model = random_encoder(patch=5)
    assert model.spectral_embedding[1].in_features == 250
    x = torch.rand(4, 12, 10, 5, 5)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, :6] = False
    out = model(x, mask)
    assert out.shape == (4, 32)
    torch.testing.assert_close(out, plain_reference(model, x, mask), atol=TOL, rtol=0)
    with pytest.raises(TimeSenCLIPError, match=r"\(N, 12, 4 or 1, 10, 5, 5\)"):
        model(torch.rand(4, 12, 10))


def test_bad_inputs_are_named():
    model = random_encoder()
    with pytest.raises(TimeSenCLIPError, match=r"got shape \(4, 11, 10\)"):
        model(torch.rand(4, 11, 10))
    with pytest.raises(TimeSenCLIPError, match=r"\(N, 12, 4 or 1, 10\).*got shape \(4, 3, 10\)"):
        model(torch.rand(4, 3, 10))
    with pytest.raises(TimeSenCLIPError, match="month_mask"):
        model(torch.rand(4, 12, 10), torch.ones(4, 12))
    with pytest.raises(TimeSenCLIPError, match="month_mask"):
        model(torch.rand(4, 12, 10), torch.ones(4, 11, dtype=torch.bool))
