"""Cached CLIP text embeddings of class prompts for zero-shot mapping.

Per class the formatted prompts (``encoder.classes.class_prompts``) are encoded by the open_clip
text tower, each L2-normalised, averaged and re-normalised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Class sets and templates live in encoder.classes (no torch there, so the command line's light
# verbs stay light); re-exported for the callers that take them together with the text encoder.
from encoder.classes import (  # noqa: F401
    ClassSpec,
    class_prompts,
    class_set,
    class_set_names,
    is_class_set,
    reference_classes,
    resolve_classes,
    template_set,
    template_set_names,
)
from encoder.clip import clip_pretrained, open_clip_model
from encoder.device import resolve_device
from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.files import file_sha256

_CACHE_FORMAT = "timesenclip-prompts-v1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def default_cache_dir() -> Path:
    """$TIMESENCLIP_CACHE, else ~/.cache/timesenclip."""
    env = os.environ.get("TIMESENCLIP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "timesenclip"


# CLIP weights are hundreds of MB: hash each file once per process. Size and mtime are part of
# the key so that a file rewritten in place is hashed again.
@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def _file_id(path: Path) -> str:
    st = path.stat()
    return _cached_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


class TextEncoder:
    """CLIP text tower wrapper producing per-class prompt-ensemble embeddings, cached on disk.

    ``model`` is an open_clip name with ``pretrained`` a tag or a local weights file, or
    ``local-dir:FOLDER`` (open_clip_config.json + weights) or ``hf-hub:ORG/REPO``; with a schema,
    ``pretrained`` is ignored as open_clip does. open_clip is loaded only on a cache miss.
    ``device`` is ``auto``, ``cpu`` or ``cuda[:N]`` (checked by ``encoder.device.resolve_device``).
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | Path | None = "openai",
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
        batch_size: int = 256,
    ) -> None:
        self.model = model
        # open_clip ignores `pretrained` for schema names; keep it out of the cache key too
        self.pretrained = clip_pretrained(model, pretrained)
        self.device = resolve_device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.batch_size = batch_size
        self._weights_id: str | None = None
        self._clip: Any = None
        self._tokenizer: Any = None

    def weights_id(self) -> str:
        """Identity of the weights: file sha256 for local files and folders, else the tag."""
        if self._weights_id is None:
            self._weights_id = self._compute_weights_id()
        return self._weights_id

    def _compute_weights_id(self) -> str:
        if self.model.startswith("local-dir:"):
            folder = Path(self.model.removeprefix("local-dir:"))
            if not (folder / "open_clip_config.json").is_file():
                raise TimeSenCLIPError(
                    f"model {self.model!r}: {folder} has no open_clip_config.json; a local-dir "
                    "model folder needs open_clip_config.json (with 'model_cfg') and a weights file"
                )
            files = sorted(
                p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.suffix == ".json"
            )
            return "local-dir:" + ",".join(f"{p.name}={_file_id(p)}" for p in files)
        if self.pretrained and os.path.isfile(self.pretrained):
            return "file:" + _file_id(Path(self.pretrained))
        return f"tag:{self.pretrained or self.model}"

    def cache_key(self, prompts: Sequence[Sequence[str]]) -> str:
        """sha256 over model, pretrained, weights identity and the exact prompt lists."""
        record = {
            "format": _CACHE_FORMAT,
            "model": self.model,
            "pretrained": self.pretrained,
            "weights": self.weights_id(),
            "prompts": [list(p) for p in prompts],
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()

    def cache_path(self, prompts: Sequence[Sequence[str]]) -> Path:
        """Where the embeddings of these prompt lists are cached."""
        return self.cache_dir / "prompts" / f"{self.cache_key(prompts)}.npy"

    def class_embeddings(
        self,
        classes: str | Sequence[str | Mapping[str, Any] | ClassSpec],
        templates: str | Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Unit-norm (K, D) float32 CPU tensor, one row per class (see module docstring)."""
        return self.embed_prompts(class_prompts(classes, templates))

    def embed_prompts(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """Ensemble embedding per list of prompts, from the disk cache when present."""
        if not prompts or not all(group for group in prompts):
            raise TimeSenCLIPError("every class needs at least one prompt to embed")
        path = self.cache_path(prompts)
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.ndim == 2 and cached.shape[0] == len(prompts):
                    return torch.from_numpy(cached)
            except (OSError, ValueError):
                pass  # an unreadable cache entry is recomputed and overwritten
        weights = self._encode(prompts)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.save(f, weights.numpy())  # a file object: np.save would add .npy to a name
        return weights

    def _load(self) -> None:
        import open_clip  # deferred: importing open_clip costs seconds and is not needed on a hit

        self._clip, _ = open_clip_model(self.model, self.pretrained, self.device)
        self._tokenizer = open_clip.get_tokenizer(self.model)

    def _encode(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        if self._clip is None:
            self._load()
        flat = [p for group in prompts for p in group]
        with torch.inference_mode():
            parts = [
                self._clip.encode_text(
                    self._tokenizer(flat[i : i + self.batch_size]).to(self.device)
                )
                for i in range(0, len(flat), self.batch_size)
            ]
            each = torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1)
            means = torch.stack([g.mean(0) for g in each.split([len(g) for g in prompts])])
            weights = torch.nn.functional.normalize(means, dim=-1).cpu()
        # a clone outside inference mode is an ordinary tensor, usable in autograd like a cache hit
        return weights.clone()
