"""Loading every published checkpoint layout, our own format, and the errors for bad files."""

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch

from encoder.checkpoint import (
    PREFIXES,
    CheckpointError,
    EncoderMetadata,
    file_sha256,
    load_encoder,
    save_checkpoint,
)
from encoder.model import EncoderConfig, TimeSenCLIPEncoder
from encoder.preprocess import BANDS
from fixtures.tiny import tiny_encoder
from timesenclip.common.files import file_sha256 as shared_file_sha256

# Published files carry no head count, so the loader assumes the published 8: test models use 8.
TINY = {"dim": 32, "depth": 2, "heads": 8, "ff_dim": 16}
TRAINING_EXTRAS = {
    "clip_model.visual.proj": torch.zeros(4, 4),
    "learner.queue": torch.zeros(8, 4),
    "learner.queue_ptr": torch.zeros(1, dtype=torch.long),
    "learner.pooling_layer.weight": torch.zeros(1, 4),
    "logit_scale": torch.tensor(4.6),
}


@pytest.fixture(scope="module")
def model() -> TimeSenCLIPEncoder:
    torch.manual_seed(0)
    model = TimeSenCLIPEncoder(**TINY)
    with torch.no_grad():
        model.time_pos_encoding.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(5, 12, 10)


def assert_same_model(loaded: TimeSenCLIPEncoder, model: TimeSenCLIPEncoder, x) -> None:
    assert not loaded.training
    assert loaded.config == model.config
    assert torch.equal(loaded(x), model(x))


LAYOUTS = ("bare", "state_dict wrapper", *PREFIXES, "class_token", "learner and learner_val")


def published_layout(state: dict, layout: str) -> dict:
    """One layout the published weights may come in, always with the training-only extras."""
    if layout == "bare":
        return state | TRAINING_EXTRAS
    if layout == "state_dict wrapper":
        return {"state_dict": state | TRAINING_EXTRAS, "epoch": 3}
    if layout == "class_token":
        renamed = {("class_token" if k == "time_token" else k): v for k, v in state.items()}
        return {f"learner.ts_encoder.{k}": v for k, v in renamed.items()} | TRAINING_EXTRAS
    if layout == "learner and learner_val":  # the validation copy must not shadow the encoder
        val = {f"learner_val.ts_encoder.{k}": torch.zeros_like(v) for k, v in state.items()}
        return {f"learner.ts_encoder.{k}": v for k, v in state.items()} | val | TRAINING_EXTRAS
    return {"state_dict": {layout + k: v for k, v in state.items()} | TRAINING_EXTRAS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_published_layouts_load_identically(layout, model, x, tmp_path):
    path = tmp_path / "published.ckpt"
    torch.save(published_layout(dict(model.state_dict()), layout), path)
    loaded = load_encoder(path)
    assert loaded.metadata is None
    assert_same_model(loaded, model, x)


def test_own_format_round_trip(model, x, tmp_path):
    meta = EncoderMetadata(clip_model="ViT-B-16", clip_pretrained="laion2b_s34b_b88k")
    path = save_checkpoint(model, tmp_path / "ours.pt", meta, extra={"epoch": 7})
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == "timesenclip-encoder" and raw["extra"] == {"epoch": 7}
    assert set(raw["state_dict"]) == set(model.state_dict())
    loaded = load_encoder(str(path))
    assert_same_model(loaded, model, x)
    assert loaded.metadata == dataclasses.replace(meta, config=model.config)
    assert loaded.metadata.conventions.low[0] == 67.0 and loaded.metadata.conventions.clamp
    assert EncoderMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_heads_come_from_metadata(x, tmp_path):
    model = TimeSenCLIPEncoder(dim=36, depth=1, heads=3, ff_dim=8).eval()
    loaded = load_encoder(save_checkpoint(model, tmp_path / "h3.pt"))
    assert loaded.config.heads == 3
    assert torch.equal(loaded(x), model(x))
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # without metadata: published 8 heads
    with pytest.raises(CheckpointError, match="dim=36 is not divisible by heads=8"):
        load_encoder(tmp_path / "bare.pt")


def test_architecture_is_inferred_from_tensors(tmp_path):
    torch.manual_seed(1)
    model = TimeSenCLIPEncoder(dim=16, depth=3, heads=2, ff_dim=24, months=12, patch=5).eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "k5.ckpt")
    loaded = load_encoder(tmp_path / "k5.ckpt")
    assert loaded.config == EncoderConfig(dim=16, depth=3, heads=8, ff_dim=24, patch=5)
    x = torch.rand(3, 12, 10, 5, 5)
    # 8 heads instead of 2 change attention, so compare against the same weights with 8 heads
    same_heads = TimeSenCLIPEncoder(dim=16, depth=3, heads=8, ff_dim=24, patch=5).eval()
    same_heads.load_state_dict(model.state_dict())
    assert torch.equal(loaded(x), same_heads(x))


def test_non_square_patch_is_refused(tmp_path):
    state = TimeSenCLIPEncoder(**TINY).state_dict()
    state["spectral_embedding.1.weight"] = torch.zeros(32, 30)
    torch.save(state, tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match="30 inputs, which is not 10 bands times a square"):
        load_encoder(tmp_path / "k.pt")


def test_wrong_shape_missing_and_unexpected_keys_are_named(model, tmp_path):
    state = model.state_dict()
    wrong = dict(state, **{"transformer.layers.1.linear2.weight": torch.zeros(32, 17)})
    torch.save(wrong, tmp_path / "wrong.pt")
    message = "'transformer.layers.1.linear2.weight' has shape (32, 17) in the file but (32, 16)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_encoder(tmp_path / "wrong.pt")
    missing = {k: v for k, v in state.items() if k != "transformer.layers.1.norm2.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(
        CheckpointError, match=re.escape("missing key 'transformer.layers.1.norm2.bias'")
    ):
        load_encoder(tmp_path / "missing.pt")
    torch.save(dict(state, **{"head.extra": torch.zeros(2)}), tmp_path / "unexpected.pt")
    with pytest.raises(CheckpointError, match=re.escape("unexpected key 'head.extra'")):
        load_encoder(tmp_path / "unexpected.pt")
    no_anchor = {k: v for k, v in state.items() if k != "time_pos_encoding"}
    torch.save(no_anchor, tmp_path / "no_pos.pt")
    with pytest.raises(CheckpointError, match="missing the key 'time_pos_encoding'"):
        load_encoder(tmp_path / "no_pos.pt")


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "config.json").write_text(json.dumps({"dim": 512}))
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "no_tensors.pt")
    for name in ("random.bin", "config.json"):
        with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
            load_encoder(tmp_path / name)
    with pytest.raises(CheckpointError, match="no state_dict of tensors"):
        load_encoder(tmp_path / "no_tensors.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "absent.ckpt")


class UnsafeHyperParameters(OrderedDict):
    """A class that safe loading does not know, unlike the Namespace Lightning stores."""


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_lightning_checkpoint_with_namespace_loads(zip_format, model, x, tmp_path):
    state = {f"learner.ts_encoder.{k}": v for k, v in model.state_dict().items()}
    ckpt = {
        "state_dict": state | TRAINING_EXTRAS,
        "hyper_parameters": {"args": argparse.Namespace(lr=1e-4, batch_size=1024, k=1)},
        "epoch": 3,
    }
    # legacy (pre-1.6, non-zip) files cannot be memory-mapped: the loader must not ask for it
    torch.save(ckpt, tmp_path / "l.ckpt", _use_new_zipfile_serialization=zip_format)
    assert_same_model(load_encoder(tmp_path / "l.ckpt"), model, x)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_unsafe_pickle_is_refused_with_the_reason(zip_format, model, tmp_path):
    hparams = UnsafeHyperParameters(lr=1e-4)
    torch.save(
        {"state_dict": model.state_dict(), "hparams": hparams},
        tmp_path / "p.ckpt",
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(CheckpointError, match=r"\(\S*UnsafeHyperParameters\).*weights_only=True"):
        load_encoder(tmp_path / "p.ckpt")


def test_file_is_read_on_the_cpu_then_moved(model, x, tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    torch.save(published_layout(dict(model.state_dict()), "state_dict wrapper"), path)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_encoder(path, map_location="meta")  # "meta" stands in for a GPU
    assert seen == ["cpu"]
    assert {p.device.type for p in loaded.parameters()} == {"meta"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"band_order": [f"X{i}" for i in range(10)]}, r"'X0' is not a Sentinel-2 band"),
        ({"band_order": ["B02"] * 10}, r"must name each of the 10 bands"),
        ({"low": [0.0] * 9}, r"one low value per band \(10\), got 9"),
        ({"single_token_position": "july"}, r"single_token_position 'july' is unknown"),
    ],
)
def test_malformed_conventions_are_refused(change, message, model, tmp_path):
    path = save_checkpoint(model, tmp_path / "n.pt")
    record = torch.load(path, weights_only=True)
    record["metadata"]["conventions"].update(change)
    torch.save(record, path)
    with pytest.raises(CheckpointError, match="metadata is malformed.*" + message):
        load_encoder(path)


def test_metadata_of_earlier_versions_is_read(model, x, tmp_path):
    """Earlier files kept bands/low/high/clamp at the top level of the metadata."""
    path = save_checkpoint(model, tmp_path / "old.pt")
    record = torch.load(path, weights_only=True)
    del record["metadata"]["conventions"]
    low = [float(v) + 1 for v in range(10)]
    record["metadata"] |= {"bands": ["B02", "B03", "B04", *BANDS[3:]], "low": low, "clamp": False}
    torch.save(record, path)
    loaded = load_encoder(path)
    assert loaded.conventions.low == tuple(low) and not loaded.conventions.clamp
    assert loaded.conventions.single_token_position == "mean"
    assert torch.equal(loaded(x), model(x))


def test_hub_source_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"Run once with network access.*local checkpoint"):
        load_encoder("hf-hub:nobody-test/no-such-repo/TimeSenCLIP_1x1.ckpt")


def test_hub_source_resolves_nested_file(monkeypatch, model, x, tmp_path):
    local = save_checkpoint(model, tmp_path / "file.ckpt")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert_same_model(load_encoder("hf-hub:owner/repo/sub/dir/file.ckpt"), model, x)
    assert calls == [("owner/repo", "sub/dir/file.ckpt")]
    with pytest.raises(CheckpointError, match="hf-hub:OWNER/REPO/FILE"):
        load_encoder("hf-hub:owner/repo")


def test_file_sha256(tmp_path):
    data = bytes(range(256)) * 5000  # more than one read block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert file_sha256 is shared_file_sha256  # one helper, still importable from here


def test_tiny_encoder_keeps_the_global_generator():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = tiny_encoder(seed=5)
    assert torch.equal(torch.rand(3), expected)
    second = tiny_encoder(seed=5)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())


def test_package_exports_lazily():
    code = (
        "import sys, encoder, timesenclip.common.errors, timesenclip.common.files\n"
        "assert not {'torch', 'huggingface_hub'} & set(sys.modules), sorted(sys.modules)\n"
        "from encoder import load_encoder, BANDS\n"
        "assert 'torch' in sys.modules and load_encoder.__module__ == 'encoder.checkpoint'"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


class RunsCode:
    """What a malicious checkpoint pickles: a call made while the file is read."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("func", "shown"), [(os.system, "posix.system"), (eval, "eval")], ids=["system", "eval"]
)
def test_pickled_code_is_refused_as_code(func, shown, zip_format, model, tmp_path):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.ckpt"
    state = {"state_dict": model.state_dict(), "x": RunsCode(func, arg)}
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as info:
        load_encoder(path)
    message = str(info.value)
    assert f"holds code besides tensors ({shown})" in message
    assert "torch.save(model.state_dict(), PATH)" in message
    assert "not a PyTorch checkpoint" not in message
    assert not marker.exists()
