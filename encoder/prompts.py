"""Class sets, prompt templates and cached CLIP text embeddings for zero-shot mapping.

Prompt rule: every prompt of a class (its explicit ``prompts``, else its name) is formatted with
every template, so the default template set ``class_names`` ("{}") gives the bare names the
reference zero-shot code encodes. Per class the formatted prompts are encoded by the open_clip text
tower, each L2-normalised, averaged and re-normalised.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from encoder.atomic import atomic_path
from encoder.clip import clip_pretrained, open_clip_model
from encoder.device import resolve_device
from encoder.errors import TimeSenCLIPError
from encoder.files import file_sha256

# Public set name -> key under `tasks` in classes.yaml (the short keys are accepted as aliases).
_SET_KEYS = {
    "land_cover": "lc",
    "land_use": "lu",
    "crop_type": "crop",
    "bioregion": "bioregion",
    "eunis_habitat": "eunis",
    "country": "nuts",
}

# Conventional land-cover colours (CORINE / WorldCover-like), keyed by the YAML class names.
_LAND_COVER_COLORS = {
    "Artificial Land": "#e31a1c",
    "Cropland": "#ffd92f",
    "Woodland": "#1b7837",
    "Shrubland": "#a08c32",
    "Grassland": "#a6d96a",
    "Bare Land": "#c8bea8",
    "Water": "#2b83ba",
    "Wetlands": "#0096a0",
}

_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_GOLDEN = 0.6180339887498949
# Cycling saturation/value as well as hue keeps neighbours in the sequence apart.
_SAT_VAL = ((0.70, 0.90), (0.45, 0.95), (0.85, 0.65))
_CACHE_FORMAT = "timesenclip-prompts-v1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class ClassSpec:
    """A target class: display name, optional explicit prompts, optional "#rrggbb" colour."""

    name: str
    prompts: tuple[str, ...] | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TimeSenCLIPError(f"class name {self.name!r} is empty: give every class a name")
        object.__setattr__(self, "name", self.name.strip())
        if self.prompts is not None:
            prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise TimeSenCLIPError(
                    f"class {self.name!r}: prompts must be a non-empty list of non-empty strings, "
                    f"got {self.prompts!r}"
                )
            object.__setattr__(self, "prompts", prompts)
        if self.color is not None:
            if not isinstance(self.color, str) or not _COLOR_RE.match(self.color):
                raise TimeSenCLIPError(
                    f"class {self.name!r}: colour {self.color!r} is not of the form '#rrggbb'"
                )
            object.__setattr__(self, "color", self.color.lower())


@functools.cache
def _reference() -> dict[str, Any]:
    text = resources.files("encoder").joinpath("data/classes.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def reference_classes(key: str) -> list[dict[str, Any]]:
    """The raw class entries of one task of the reference YAML (e.g. ``lc``), codes included."""
    return _reference()["tasks"][key]["classes"]


def class_set_names() -> tuple[str, ...]:
    """Names of the built-in class sets."""
    return tuple(_SET_KEYS)


def _find_key(name: str) -> str | None:
    wanted = name.strip().lower().replace("-", "_")
    return next((key for public, key in _SET_KEYS.items() if wanted in (public, key)), None)


def is_class_set(name: str) -> bool:
    """Whether ``name`` names a built-in class set (case, spaces, '-' and short aliases allowed)."""
    return _find_key(name) is not None


def _set_key(name: str) -> str:
    key = _find_key(name)
    if key is not None:
        return key
    raise TimeSenCLIPError(
        f"unknown class set {name!r}: choose one of {', '.join(_SET_KEYS)} "
        f"(aliases {', '.join(k for k in _SET_KEYS.values() if k not in _SET_KEYS)}), "
        "or give your own list of class names"
    )


def class_set(name: str) -> list[ClassSpec]:
    """A built-in class set, in logit order, with the reference prompts and map colours."""
    key = _set_key(name)
    entries = reference_classes(key)
    colors = _LAND_COVER_COLORS if key == "lc" else {}
    return [
        ClassSpec(e["name"], tuple(e["prompts"]), colors.get(e["name"], palette_color(i)))
        for i, e in enumerate(entries)
    ]


def resolve_classes(spec: str | Sequence[str | Mapping[str, Any] | ClassSpec]) -> list[ClassSpec]:
    """Classes from a set name, or a list of names, {name, color?, prompts?} dicts or ClassSpecs."""
    if isinstance(spec, str):
        return class_set(spec)
    if not isinstance(spec, Sequence) or not spec:
        raise TimeSenCLIPError(
            f"classes must be a class set name or a non-empty list of classes, got {spec!r}"
        )
    classes = [_one_class(item) for item in spec]
    seen: dict[str, str] = {}
    for c in classes:
        if c.name.casefold() in seen:
            raise TimeSenCLIPError(
                f"class name {c.name!r} appears twice (also as {seen[c.name.casefold()]!r}): "
                "class names must be unique"
            )
        seen[c.name.casefold()] = c.name
    return classes


def _one_class(item: str | Mapping[str, Any] | ClassSpec) -> ClassSpec:
    if isinstance(item, ClassSpec):
        return item
    if isinstance(item, str):
        return ClassSpec(item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"name", "color", "prompts"}
        if unknown or "name" not in item:
            raise TimeSenCLIPError(
                f"class entry {dict(item)!r}: expected keys name (required), color, prompts"
                + (f"; unknown: {', '.join(sorted(map(str, unknown)))}" if unknown else "")
            )
        return ClassSpec(item["name"], item.get("prompts"), item.get("color"))
    raise TimeSenCLIPError(
        f"class entry {item!r} is neither a name nor a mapping with a 'name' key"
    )


def palette_color(i: int) -> str:
    """The i-th colour of a deterministic golden-ratio HSV sequence."""
    s, v = _SAT_VAL[i % len(_SAT_VAL)]
    r, g, b = colorsys.hsv_to_rgb((0.05 + i * _GOLDEN) % 1.0, s, v)
    return "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (r, g, b)))


def class_colors(classes: Sequence[ClassSpec]) -> list[str]:
    """One "#rrggbb" per class: its own colour, else the next palette colour not already used."""
    taken = {c.color for c in classes if c.color}
    palette = (p for i in itertools.count() if (p := palette_color(i)) not in taken)
    return [c.color or next(palette) for c in classes]


def template_set_names() -> tuple[str, ...]:
    """Names of the built-in template sets."""
    return tuple(_reference()["template_sets"])


def template_set(spec: str | Sequence[str] | None = None) -> list[str]:
    """Templates by set name (None = the default, bare class names) or a list of "{}" strings."""
    if spec is None:
        spec = _reference()["default_template_set"]
    if isinstance(spec, str):
        sets = _reference()["template_sets"]
        if spec not in sets:
            raise TimeSenCLIPError(
                f"unknown template set {spec!r}: choose one of {', '.join(sets)}, "
                "or give a list of templates each containing '{}'"
            )
        return list(sets[spec])
    templates = list(spec)
    if not templates:
        raise TimeSenCLIPError("the template list is empty: give at least one template like '{}'")
    for t in templates:
        _check_template(t)
    return templates


def _check_template(template: Any) -> None:
    sentinel = "\x00"
    try:
        ok = isinstance(template, str) and template.format(sentinel).count(sentinel) == 1
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise TimeSenCLIPError(
            f"template {template!r} must be a string with exactly one '{{}}' for the class text "
            "(write literal braces as '{{' and '}}')"
        )


def class_prompts(
    classes: str | Sequence[str | Mapping[str, Any] | ClassSpec],
    templates: str | Sequence[str] | None = None,
) -> list[list[str]]:
    """Per class, each of its prompts (else its name) formatted with each template, prompt-major."""
    formats = template_set(templates)
    return [
        [t.format(p) for p in (c.prompts or (c.name,)) for t in formats]
        for c in resolve_classes(classes)
    ]


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
