"""Zero-shot scoring against hand-computed softmax(100 x cosine)."""

import numpy as np
import pytest
import torch

from encoder.zeroshot import cosine_logits, score
from timesenclip.common.errors import TimeSenCLIPError


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(0)
    weights = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=1)
    truth = torch.randint(0, 6, (50,), generator=gen)
    emb = 3.0 * weights[truth] + 0.05 * torch.randn(50, 16, generator=gen)
    return emb, weights, truth


def _manual_probs(emb, weights, scale=100.0):
    e = emb.double().numpy()
    w = weights.double().numpy()
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)
    ).T
    z = np.exp(scale * cos - (scale * cos).max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_obvious_labels_and_confidence(case):
    emb, weights, truth = case
    result = score(emb, weights)
    assert result.label.dtype == torch.int64 and result.confidence.dtype == torch.float32
    assert torch.equal(result.label, truth)
    probs = _manual_probs(emb, weights)
    np.testing.assert_allclose(result.confidence.numpy(), probs.max(axis=1), rtol=1e-4, atol=1e-6)
    assert result.top_k_labels.shape == (50, 1)


def test_top_k_ordering(case):
    emb, weights, _ = case
    emb = emb + 2.0 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(1))
    result = score(emb, weights, top_k=4, logit_scale=10.0)
    probs = _manual_probs(emb, weights, 10.0)
    order = np.argsort(-probs, axis=1)[:, :4]
    assert np.array_equal(result.top_k_labels.numpy(), order)
    np.testing.assert_allclose(
        result.top_k_scores.numpy(), np.take_along_axis(probs, order, 1), rtol=1e-4, atol=1e-6
    )
    assert torch.all(result.top_k_scores[:, :-1] >= result.top_k_scores[:, 1:])
    assert torch.equal(result.label, result.top_k_labels[:, 0])
    assert torch.equal(result.confidence, result.top_k_scores[:, 0])


def test_nan_rows_are_invalid(case):
    emb, weights, truth = case
    emb = emb.clone()
    emb[[3, 7]] = float("nan")
    emb[10, 2] = float("nan")
    result = score(emb, weights, top_k=2)
    bad = torch.zeros(50, dtype=torch.bool)
    bad[[3, 7, 10]] = True
    assert torch.all(result.label[bad] == -1)
    assert torch.all(result.confidence[bad].isnan())
    assert torch.all(result.top_k_labels[bad] == -1)
    assert torch.all(result.top_k_scores[bad].isnan())
    assert torch.equal(result.label[~bad], truth[~bad])
    assert not result.confidence[~bad].isnan().any()


def test_batching_is_exact(case):
    emb, weights, _ = case
    emb = emb.clone()
    emb[:7] = float("nan")  # a whole batch of invalid rows
    one = score(emb, weights, top_k=3)
    many = score(emb, weights, top_k=3, batch_size=7)
    for a, b in zip((one.label, one.top_k_labels), (many.label, many.top_k_labels), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(one.top_k_scores, many.top_k_scores, equal_nan=True)


def test_numpy_input_and_scale_invariance(case):
    emb, weights, _ = case
    expected = score(emb, weights, top_k=2)
    got = score(emb.double().numpy() * 7.0, weights.numpy(), top_k=2, device="cpu")
    assert torch.equal(got.top_k_labels, expected.top_k_labels)
    torch.testing.assert_close(got.top_k_scores, expected.top_k_scores)
    assert got.label.device.type == "cpu"


def test_cosine_logits(case):
    emb, weights, _ = case
    logits = cosine_logits(emb, weights * 2.0)
    manual = torch.nn.functional.normalize(emb, dim=1) @ weights.T
    torch.testing.assert_close(logits, manual)
    assert logits.abs().max() <= 1.0 + 1e-6


def test_empty_input(case):
    _, weights, _ = case
    result = score(torch.empty(0, 16), weights, top_k=2)
    assert result.label.shape == (0,) and result.top_k_scores.shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 7}, "top_k=7"),
        ({"top_k": 0}, "top_k=0"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(case, kwargs, message):
    emb, weights, _ = case
    with pytest.raises(TimeSenCLIPError, match=message):
        score(emb, weights, **kwargs)


def test_bad_shapes(case):
    emb, weights, _ = case
    with pytest.raises(TimeSenCLIPError, match="width 16 differs from class weight width 8"):
        score(emb, weights[:, :8])
    with pytest.raises(TimeSenCLIPError, match="2-D"):
        score(emb[0], weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu(case):
    emb, weights, _ = case
    cpu = score(emb, weights, top_k=3)
    gpu = score(emb.cuda(), weights, top_k=3)
    assert gpu.label.device.type == "cpu"
    assert torch.equal(cpu.top_k_labels, gpu.top_k_labels)
    torch.testing.assert_close(cpu.top_k_scores, gpu.top_k_scores, atol=1e-4, rtol=1e-4)
