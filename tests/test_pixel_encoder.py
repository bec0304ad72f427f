"""Flattening composites into pixel series and embedding them in batches."""

from __future__ import annotations

import numpy as np
import torch

from encoder import inference
from encoder.preprocess import normalize
from fixtures.tiny import tiny_encoder
from pipeline.maps import pixel_encoder
from pipeline.maps.classify import TaskPlan
from pipeline.maps.pixel_encoder import embed_series, pixel_series, score_composite


def composite(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cube = rng.uniform(100, 4000, size=(12, 10, 3, 4)).astype(np.float32)
    cube[2:5, :, 0, 0] = np.nan  # three cloudy months
    cube[:, :, 1, 1] = np.nan  # a pixel never seen
    return cube


def test_pixel_series_is_the_cube_per_pixel():
    cube = composite()
    series, present = pixel_series(cube)
    assert series.shape == (12, 12, 10) and present.shape == (12, 12)
    row, col = 2, 3
    pixel = row * 4 + col
    np.testing.assert_array_equal(series[pixel], normalize(cube[:, :, row, col]))
    assert present[0].tolist() == [True, True, False, False, False, *[True] * 7]
    assert not present[1 * 4 + 1].any()


def test_embeddings_match_the_model_and_mark_empty_pixels():
    model = tiny_encoder(16)
    series, present = pixel_series(composite())
    out = embed_series(model, series, present)
    assert out.shape == (12, 16) and out.dtype == np.float32
    assert np.isnan(out[5]).all() and np.isfinite(np.delete(out, 5, axis=0)).all()
    with torch.inference_mode():
        direct = model(torch.from_numpy(series[:1]), torch.from_numpy(present[:1])).numpy()
    np.testing.assert_allclose(out[:1], direct, atol=1e-6)


def test_batches_change_nothing_and_cpu_batches_are_capped(monkeypatch):
    model = tiny_encoder(16)
    series, present = pixel_series(composite())
    whole = embed_series(model, series, present, batch_size=1_000_000, runtime="torch")
    calls = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda x, m, *rest: calls.append(len(x)) or forward(x, m, *rest)
    )
    monkeypatch.setattr(inference, "CPU_BATCH", 4)
    capped = embed_series(model, series, present, batch_size=1_000_000, runtime="torch")
    np.testing.assert_allclose(capped, whole, atol=1e-6)
    assert calls == [4, 4, 3]  # 11 pixels with a month, never more than CPU_BATCH at once


def test_a_composite_scored_a_part_at_a_time_equals_it_scored_whole(monkeypatch):
    """Parts of 5 pixels, the last one short, with a pixel never seen: the layers and the kept
    embeddings are those of the whole series embedded and scored at once."""
    model = tiny_encoder(16)
    weights = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    plan = TaskPlan(name="land_cover", classes=(), colors=(), prompts=(), weights=weights)
    cube = composite()
    whole = embed_series(model, *pixel_series(cube))
    want = plan.score(whole, confidence=True)
    monkeypatch.setattr(pixel_encoder, "CPU_PART", 5)
    layers, kept, seconds = score_composite(
        model, cube, [plan], confidence=True, keep_embeddings=True
    )
    assert list(layers) == list(want) == ["land_cover", plan.confidence_layer]
    for name, values in want.items():
        assert layers[name].dtype == np.uint8
        np.testing.assert_array_equal(layers[name], values)
    assert layers["land_cover"][5] == 0  # the pixel never seen: nodata
    np.testing.assert_array_equal(kept, whole)
    assert seconds > 0
    layers, kept, _ = score_composite(model, cube, [plan], confidence=False, keep_embeddings=False)
    assert list(layers) == ["land_cover"] and kept is None
