"""Tiny random models for the offline demo and the tests: real formats, meaningless weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from encoder.model import TimeSenCLIPEncoder


def tiny_clip_config(embed_dim: int = 16) -> dict:
    """An open_clip model config small enough to build and run in milliseconds on a CPU."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 4,
            "layers": 1,
        },
    }


def write_tiny_clip(folder: Path, embed_dim: int = 16, seed: int = 0) -> Path:
    """Write a random tiny CLIP as an open_clip ``local-dir:`` folder and return the folder."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_clip_config(embed_dim)
    with torch.random.fork_rng(devices=[]):  # seed without resetting the caller's generator
        torch.manual_seed(seed)
        model = open_clip.CLIP(**config)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def tiny_encoder(dim: int = 16, seed: int = 0, **config: int | float) -> TimeSenCLIPEncoder:
    """A random TimeSenCLIP encoder of width ``dim`` (positions randomised so months matter)."""
    config = {"depth": 2, "heads": 4, "ff_dim": 32, **config}
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # keep the caller's generator as is
        torch.manual_seed(seed)
        model = TimeSenCLIPEncoder(dim=dim, **config)
        model.time_pos_encoding.normal_(0.0, 0.5)
    return model.eval()
