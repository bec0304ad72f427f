"""Encoder runtimes and precisions against torch float32; the export cache; device-side scoring."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.encoder import agreement, agreement_inputs, class_vectors, published_model
from encoder import inference, runtime
from encoder.inference import device_embed_scores, embed, embed_scores, month_groups
from encoder.model import PRECISIONS
from encoder.prompts import ClassSpec
from fixtures.tiny import tiny_encoder
from pipeline.maps.classify import SimilarityPlan, TaskPlan
from pipeline.maps.pixel_encoder import embed_series, score_series
from pipeline.workflow.load import WorkflowError, parse_workflow
from timesenclip.common.errors import TimeSenCLIPError

CPU = torch.device("cpu")
RUNS = [("onnx", "fp32"), ("torch", "bf16")]  # each against torch float32
TOLERANCE = {"fp32": 1e-5, "bf16": 0.05}


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory):
    """Exports go to a folder of this module, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("TIMESENCLIP_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def published():
    """Random weights of the published size, exported once for the module."""
    model = published_model()
    embed(model, torch.zeros(2, 12, 10), torch.ones(2, 12, dtype=torch.bool), runtime="onnx")
    return model


def inputs(n: int = 64, tokens: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Series with every kind of month mask: all present, some missing, one alone, none."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tokens, 10, generator=gen)
    mask = torch.rand(n, tokens, generator=gen) > 0.4
    mask[0] = True
    mask[1] = False
    mask[2] = False
    mask[2, tokens // 2] = True
    return x, mask


def reference(model, x, mask) -> torch.Tensor:
    with torch.inference_mode():
        return model(x, mask)


@pytest.mark.parametrize("tokens", [12, 4, 1])
@pytest.mark.parametrize(("run", "precision"), RUNS)
def test_tiny_runtimes_match_torch_float32(run, precision, tokens):
    model = tiny_encoder(16)
    x, mask = inputs(tokens=tokens)
    expected = reference(model, x, mask)
    found = embed(model, x, mask, runtime=run, precision=precision)
    assert found.shape == expected.shape and found.dtype == torch.float32
    np.testing.assert_array_equal(found.isnan().numpy(), expected.isnan().numpy())
    np.testing.assert_array_equal(found.isnan().any(1).numpy(), ~mask.any(1).numpy())
    np.testing.assert_allclose(
        found.nan_to_num().numpy(), expected.nan_to_num().numpy(), atol=TOLERANCE[precision]
    )


@pytest.mark.parametrize(("run", "precision"), RUNS)
def test_published_size_runtimes_match_torch_float32(published, run, precision):
    x, mask = inputs(48)
    expected = reference(published, x, mask)
    found = embed(published, x, mask, runtime=run, precision=precision)
    valid = ~expected.isnan().any(1)
    cosine = torch.nn.functional.cosine_similarity(found[valid], expected[valid])
    assert cosine.min() >= (0.999999 if precision == "fp32" else 0.99)
    assert found[~valid].isnan().all()


@pytest.mark.parametrize(("run", "precision"), [*RUNS, ("torch", "fp32")])
def test_masked_months_have_no_influence_in_any_runtime(run, precision):
    model = tiny_encoder(16)
    x, mask = inputs()
    changed = torch.where(mask[..., None], x, torch.randn_like(x) * 1e3)
    first = embed(model, x, mask, runtime=run, precision=precision)
    second = embed(model, changed, mask, runtime=run, precision=precision)
    torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True)


def test_bf16_rounds_every_layer_but_the_last():
    x, mask = inputs()
    for depth, changed in ((1, False), (2, True)):  # one layer: the last, kept float32
        model = tiny_encoder(16, depth=depth)
        fp32, bf16 = (embed(model, x, mask, runtime="torch", precision=p) for p in PRECISIONS)
        valid = ~fp32.isnan().any(1)
        assert torch.equal(fp32[valid], bf16[valid]) is not changed, depth
        np.testing.assert_allclose(bf16[valid].numpy(), fp32[valid].numpy(), atol=0.05)
    with pytest.raises(TimeSenCLIPError, match="precision 'fp16' is not known"):
        model(x, mask, precision="fp16")


def test_agreement_on_real_and_synthetic_pixels(published):
    """Issue thresholds on the real patch (when present, a sample) and the synthetic scenes."""
    for name, (series, present) in agreement_inputs().items():
        # Fewer pixels make the share of flipped classes jumpy (a few hundred: +-1 %).
        pick = slice(None, None, max(1, len(series) // 4096))
        x, mask = torch.from_numpy(series[pick][:4096]), torch.from_numpy(present[pick][:4096])
        expected = reference(published, x, mask).numpy()
        classes = class_vectors(expected)
        onnx = agreement(expected, embed(published, x, mask, runtime="onnx").numpy(), classes)
        assert onnx["random"] >= 99.5 and onnx["prototype"] >= 99.5, name
        assert onnx["cosine"] >= 0.999, name
        bf16 = agreement(expected, embed(published, x, mask, precision="bf16").numpy(), classes)
        assert bf16["random"] >= 98.0 and bf16["cosine"] >= 0.99, name


def test_export_cache_follows_the_weights(export_cache):
    model = tiny_encoder(16, seed=1)
    x, mask = inputs()
    first = runtime.export_path(model, 12)
    embed(model, x, mask, runtime="onnx")
    assert first.is_file() and first.parent == export_cache / "onnx"
    with torch.no_grad():
        model.mlp_head[1].bias.add_(1.0)
    second = runtime.export_path(model, 12)
    assert second != first and not second.exists()
    found = embed(model, x, mask, runtime="onnx")  # a new export, not the cached session
    assert second.is_file()
    np.testing.assert_allclose(found.numpy(), reference(model, x, mask).numpy(), atol=1e-5)
    assert runtime.export_path(tiny_encoder(16, seed=1), 12) == first  # same weights, same file


def test_export_cache_follows_the_runtime_version(monkeypatch):
    model = tiny_encoder(16)
    before = runtime.export_path(model, 12)
    ort = runtime.onnxruntime()
    monkeypatch.setattr(ort, "__version__", "0.0.1")
    assert runtime.export_path(model, 12) != before


def test_auto_falls_back_to_torch_without_onnxruntime(monkeypatch):
    real = importlib.import_module

    def without_ort(name, *args):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(runtime.importlib, "import_module", without_ort)
    assert runtime.select_runtime("auto", "fp32", CPU) == "torch"
    model = tiny_encoder(16, seed=2)
    x, mask = inputs()
    torch.testing.assert_close(embed(model, x, mask), reference(model, x, mask), equal_nan=True)
    with pytest.raises(TimeSenCLIPError, match="needs the onnxruntime"):
        embed(model, x, mask, runtime="onnx")


def test_runtime_choices():
    assert runtime.select_runtime("auto", "fp32", CPU) == "onnx"  # bench/encoder.py says why
    assert runtime.select_runtime("auto", "fp32", torch.device("cuda")) == "torch"
    assert runtime.select_runtime("auto", "bf16", CPU) == "torch"  # never lowers precision
    assert runtime.select_runtime("auto", "bf16", torch.device("cuda")) == "torch"
    with pytest.raises(TimeSenCLIPError, match="float32 on a CPU only"):
        runtime.select_runtime("onnx", "bf16", CPU)
    with pytest.raises(TimeSenCLIPError, match="not known"):
        runtime.select_runtime("tensorrt", "fp32", CPU)


def test_workflow_takes_runtime_and_precision(tmp_path):
    base = {
        "name": "mini",
        "year": 2023,
        "regions": [{"name": "r", "bbox": [3.80, 43.55, 3.95, 43.65]}],
        "stac": {"url": "https://earth-search.aws.element84.com/v1"},
        "tasks": [{"name": "land_cover", "classes": "land_cover"}],
        "outputs": {"dir": "out"},
    }
    model = {"checkpoint": "hf-hub:a/b/c.ckpt"}
    workflow = parse_workflow({**base, "model": model}, base_dir=tmp_path)
    assert (workflow.model.runtime, workflow.model.precision) == ("auto", "fp32")
    chosen = {**model, "runtime": "onnx", "precision": "bf16"}
    workflow = parse_workflow({**base, "model": chosen}, base_dir=tmp_path)
    assert (workflow.model.runtime, workflow.model.precision) == ("onnx", "bf16")
    with pytest.raises(WorkflowError, match="precision"):
        parse_workflow({**base, "model": {**model, "precision": "fp8"}}, base_dir=tmp_path)


def test_month_groups_cover_every_pixel_once():
    mask = np.zeros((10, 4), bool)
    mask[:5] = [True, True, False, True]
    mask[5:8] = [True, False, False, False]
    mask[8] = [False, True, True, True]  # 9 stays empty: it goes with the masked rest
    groups = month_groups(mask, min_group=3)
    assert [(len(p), None if q is None else q.tolist()) for p, q in groups] == [
        (5, [True, True, False, True]),
        (3, [True, False, False, False]),
        (2, None),
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate([p for p, _ in groups])), np.arange(10))


def plans(dim: int) -> list:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, dim)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    classes = tuple(ClassSpec(n) for n in "abc")
    task = TaskPlan("lc", classes, ("#000000",) * 3, (("a",), ("b",), ("c",)), weights)
    similarity = SimilarityPlan("sim", ("x", "y"), ("x", "y"), (("x",), ("y",)), weights[:2])
    return [task, similarity]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_device_path_groups_and_scores_like_the_host_path(monkeypatch, precision):
    """The GPU steps run on the CPU: grouped by month pattern (unmasked), scored in torch."""
    monkeypatch.setattr(inference, "MIN_GROUP", 16)
    model = tiny_encoder(16)
    x, mask = inputs(200)
    mask[10:120] = torch.tensor([True] * 5 + [False] * 3 + [True] * 4)  # a common pattern
    mask[120:150] = False
    mask[120:150, 7] = True  # a common lone month
    expected = embed(model, x, mask, runtime="torch", precision=precision).numpy()
    host = {}
    for plan in plans(16):
        host.update(plan.score(expected, True))
    scorers = [plan.scorer(True, CPU) for plan in plans(16)]
    args = (x.numpy(), mask.numpy(), scorers, True, 32, precision)
    layers, kept = device_embed_scores(model, *args)
    # float16 kept embeddings; in bf16 the grouped path rounds its own first-layer q/k/v
    atol = 2e-3 if precision == "fp32" else 0.05
    np.testing.assert_allclose(kept.astype(np.float32), expected, atol=atol)
    assert set(layers) == set(host)
    for name, values in host.items():
        assert layers[name].dtype == np.uint8
        assert (layers[name] == values).mean() >= 0.99, name
    np.testing.assert_array_equal(layers["lc"][1], host["lc"][1])  # nodata where no month


def test_rows_are_scored_as_if_taken_first(monkeypatch):
    """``rows`` picks and orders the pixels scored, in the GPU steps and on the CPU alike."""
    monkeypatch.setattr(inference, "MIN_GROUP", 16)
    model = tiny_encoder(16)
    x, mask = inputs(200)
    mask[40:90] = torch.tensor([True] * 5 + [False] * 7)
    rows = np.concatenate([np.arange(150, 30, -3), np.arange(160, 200)])
    scorers = [plan.scorer(True, CPU) for plan in plans(16)]
    x, mask = x.numpy(), mask.numpy()
    taken, kept_taken = device_embed_scores(model, x[rows], mask[rows], scorers, True, 32, "fp32")
    layers, kept = device_embed_scores(model, x, mask, scorers, True, 32, "fp32", rows)
    np.testing.assert_array_equal(kept, kept_taken)
    on_cpu, _ = embed_scores(model, x, mask, scorers, rows=rows)
    for name, values in taken.items():
        np.testing.assert_array_equal(layers[name], values)
        assert (on_cpu[name] == values).mean() >= 0.99, name


def test_embed_pattern_equals_the_masked_path():
    model = tiny_encoder(16)
    x, _ = inputs(8)
    for pattern in ([True] * 12, [False, True, True] * 4, [False] * 5 + [True] + [False] * 6):
        mask = torch.tensor([pattern] * 8)
        with torch.inference_mode():
            months = torch.from_numpy(np.flatnonzero(pattern))
            grouped = inference.embed_pattern(model, x, months)
        np.testing.assert_allclose(grouped, reference(model, x, mask), atol=1e-5)


def test_cpu_embed_scores_is_embed_then_score():
    model = tiny_encoder(16)
    x, mask = inputs()
    embeddings = embed(model, x, mask).numpy()
    expected = {}
    for plan in plans(16):
        expected.update(plan.score(embeddings, True))
    scorers = [plan.scorer(True, CPU) for plan in plans(16)]
    layers, kept = embed_scores(model, x.numpy(), mask.numpy(), scorers)
    assert kept is None
    for name, values in expected.items():
        np.testing.assert_array_equal(layers[name], values)


def test_gpu_benchmark_says_there_is_no_gpu():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "gpu.py"), "--pixels", "1024"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no GPU")


def test_score_series_gives_the_layers_of_the_host_path():
    """What a GPU chunk runs (``score_series``), here on the CPU, against embed-then-score."""
    model = tiny_encoder(16)
    x, mask = inputs()
    series, present = x.numpy(), mask.numpy()
    embeddings = embed_series(model, series, present)
    layers, kept = score_series(
        model, series, present, plans(16), confidence=True, keep_embeddings=True
    )
    for plan in plans(16):
        for name, values in plan.score(embeddings, True).items():
            np.testing.assert_array_equal(layers[name], values)
    np.testing.assert_allclose(kept.astype(np.float32), embeddings, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("run", ["onnx", "torch"])
def test_no_pixels_embed_to_nothing(run):
    model = tiny_encoder(16)
    found = embed(model, torch.zeros(0, 12, 10), torch.zeros(0, 12, dtype=torch.bool), runtime=run)
    assert found.shape == (0, 16)
    empty = np.zeros((3, 12), bool)
    layers, kept = score_series(
        model,
        np.zeros((3, 12, 10), np.float32),
        empty,
        plans(16),
        confidence=True,
        keep_embeddings=True,
    )
    assert layers["lc"].tolist() == [0, 0, 0] and np.isnan(kept).all()
