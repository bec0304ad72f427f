"""Temporal augmentation positions kept months by the model's own rule."""

import pytest
import torch

from encoder.augment import (
    AUGMENTATIONS,
    TSMIXAUG,
    augment,
    choose,
    median_token,
    quarter_drop,
    random_subset,
    recipe_kinds,
)
from fixtures.tiny import tiny_encoder
from timesenclip.common.errors import TimeSenCLIPError

N, T, D = 64, 12, 8


@pytest.fixture
def data():
    torch.manual_seed(0)
    tokens = torch.randn(N, T, D)
    pos = torch.randn(1, T, D)
    mask = torch.ones(N, T, dtype=torch.bool)
    mask[N // 2 :, ::3] = False  # the second half misses months 0, 3, 6, 9
    return tokens, mask, pos


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_quarter_drop_removes_three_consecutive_months_and_keeps_positions(data):
    tokens, _, pos = data
    full = torch.ones(N, T, dtype=torch.bool)
    out, padding = quarter_drop(tokens, full, pos, gen())
    kept = ~padding
    assert (kept.sum(1) == 9).all()
    for row in padding:
        dropped = row.nonzero().flatten()
        assert dropped.tolist() == list(range(int(dropped[0]), int(dropped[0]) + 3))
    # Kept tokens are the un-augmented tokens with their own month's position.
    assert torch.equal(out[kept], (tokens + pos).expand(N, -1, -1)[kept])
    starts = {int(row.nonzero()[0]) for row in padding}
    assert starts == set(range(10))  # every 3-month block 0..9 is drawn


def test_quarter_drop_respects_missing_months(data):
    tokens, mask, pos = data
    _, padding = quarter_drop(tokens, mask, pos, gen())
    assert not (~padding & ~mask).any()  # an absent month is never brought back
    only = torch.zeros(1, T, dtype=torch.bool)
    only[0, 4:6] = True  # both present months may fall into the dropped block
    for seed in range(20):
        _, padding = quarter_drop(tokens[:1], only, pos, gen(seed))
        assert (~padding).any()  # never left with nothing: it falls back to the present months


def test_median_token_uses_mean_position(data):
    tokens, mask, pos = data
    out, padding = median_token(tokens, mask, pos)
    assert out.shape == (N, 1, D) and not padding.any()
    i = N - 1  # a row with missing months: the median covers only the present ones
    expected = tokens[i][mask[i]].median(0).values + pos[0].mean(0)
    torch.testing.assert_close(out[i, 0], expected)
    torch.testing.assert_close(out[0, 0], tokens[0].median(0).values + pos[0].mean(0))


def test_random_subset_keeps_one_to_eleven_present_months_with_positions(data):
    tokens, mask, pos = data
    out, padding = random_subset(tokens, mask, pos, gen())
    kept = ~padding
    counts = kept.sum(1)
    assert counts.min() >= 1 and counts.max() <= 11
    assert not (kept & ~mask).any()
    # Several kept months keep their own positions; a single one takes the mean position.
    many, one = counts > 1, counts == 1
    assert many.any() and one.any()
    own = (tokens + pos)[many][kept[many]]
    assert torch.equal(out[many][kept[many]], own)
    torch.testing.assert_close(out[one][kept[one]], tokens[one][kept[one]] + pos[0].mean(0))
    many = torch.cat([random_subset(tokens, mask, pos, gen(s))[1] for s in range(10)])
    sizes = set((~many).sum(1).tolist())
    assert {1, 11} <= sizes  # both ends of 1..11 occur


def test_random_subset_single_month_matches_the_models_forward(data):
    """One kept month is encoded as forward() encodes a pixel with only that month present."""
    model = tiny_encoder(dim=8, heads=2)
    x = torch.rand(N, T, 10)
    full = torch.ones(N, T, dtype=torch.bool)
    seq, padding = random_subset(model.embed_spectral(x), full, model.time_pos_encoding, gen())
    one = (~padding).sum(1) == 1
    assert one.any()
    with torch.no_grad():
        augmented = model.encode_tokens(seq[one], padding[one])
        masked = model(x[one], ~padding[one])
    torch.testing.assert_close(augmented, masked, atol=1e-5, rtol=1e-5)


def test_quarter_drop_matches_the_models_month_mask_path(data):
    """Encoding augmented tokens equals the model's own forward with those months masked."""
    model = tiny_encoder(dim=8, heads=2)
    x = torch.rand(N, T, 10)
    full = torch.ones(N, T, dtype=torch.bool)
    tokens = model.embed_spectral(x)
    seq, padding = quarter_drop(tokens, full, model.time_pos_encoding, gen())
    with torch.no_grad():
        augmented = model.encode_tokens(seq, padding)
        masked = model(x, ~padding)
    torch.testing.assert_close(augmented, masked, atol=1e-5, rtol=1e-5)


def test_choose_probability_and_reproducibility():
    assert all(choose(gen(s), 0.0) is None for s in range(20))
    assert all(choose(gen(s), 1.0) in AUGMENTATIONS for s in range(20))
    g = gen(1)
    picks = [choose(g, 0.5) for _ in range(2000)]
    share = sum(p is not None for p in picks) / len(picks)
    assert 0.45 < share < 0.55
    assert {p for p in picks if p} == set(AUGMENTATIONS)
    g1, g2 = gen(7), gen(7)
    assert [choose(g1, 0.5) for _ in range(50)] == [choose(g2, 0.5) for _ in range(50)]
    assert choose(gen(0), 1.0, ("median",)) == "median"


def test_tsmixaug_draws_median_and_quarter_drop_each_on_a_quarter_of_batches():
    """The published recipe: on 50 % of batches, median pooling or quarter drop, equal odds."""
    draws = 4000
    g = gen(3)
    picks = [choose(g, 0.5, recipe_kinds("tsmixaug")) for _ in range(draws)]
    sd = (draws * 0.25 * 0.75) ** 0.5  # binomial, p = 1/4
    for kind in TSMIXAUG:
        assert abs(picks.count(kind) - draws / 4) < 4 * sd, kind
    assert abs(picks.count(None) - draws / 2) < 4 * (draws * 0.25) ** 0.5
    assert set(picks) == {None, *TSMIXAUG}  # never the random subset
    assert recipe_kinds("all") == AUGMENTATIONS
    assert recipe_kinds("all", ("subset",)) == ("subset",)
    with pytest.raises(TimeSenCLIPError, match="unknown augmentation recipe"):
        recipe_kinds("mixup")


def test_lone_tokens_take_the_january_position_when_told(data):
    tokens, mask, pos = data
    out, _ = median_token(tokens, mask, pos, single="january")
    torch.testing.assert_close(out[0, 0], tokens[0].median(0).values + pos[0, 0])
    seq, padding = augment("subset", tokens, mask, pos, gen(), single="january")
    one = (~padding).sum(1) == 1
    assert one.any()
    kept = ~padding[one]
    torch.testing.assert_close(seq[one][kept], tokens[one][kept] + pos[0, 0])


def test_unknown_augmentation(data):
    tokens, mask, pos = data
    with pytest.raises(TimeSenCLIPError, match="unknown augmentation"):
        augment("shuffle", tokens, mask, pos, gen())
