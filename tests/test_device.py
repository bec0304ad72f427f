"""Device names from a config or the command line: checked once, with clear errors."""

import pytest
import torch

from encoder.device import resolve_device
from timesenclip.common.errors import TimeSenCLIPError


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(("count", "expected"), [(0, "cpu"), (2, "cuda")])
def test_auto_picks_the_gpu_when_there_is_one(monkeypatch, count, expected):
    fake_gpus(monkeypatch, count)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(None) == torch.device(expected)


def test_cpu_and_existing_gpus(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "cpu cuda"])
def test_invalid_names(name):
    with pytest.raises(TimeSenCLIPError, match="is not valid: use auto, cpu or cuda"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", torch.device("cuda", 0)])
def test_cuda_without_a_gpu(monkeypatch, name):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(TimeSenCLIPError, match="asks for a GPU but PyTorch sees no CUDA device"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda:2", "cuda:7", torch.device("cuda", 2)])
def test_cuda_index_beyond_the_gpus(monkeypatch, name):
    fake_gpus(monkeypatch, 2)
    with pytest.raises(TimeSenCLIPError, match=r"does not exist: this machine has 2 CUDA device"):
        resolve_device(name)
