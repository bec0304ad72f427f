"""Class sets and prompt templates: what a zero-shot task asks the text tower for.

Prompt rule: every prompt of a class (its explicit ``prompts``, else its name) is formatted with
every template, so the default template set ``class_names`` ("{}") gives the bare names the
reference zero-shot code encodes. No torch here: the command line lists and checks classes
without loading a model. Map colours are chosen in ``pipeline.maps.style``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from timesenclip.common.errors import TimeSenCLIPError

# Public set name -> key under `tasks` in classes.yaml (the short keys are accepted as aliases).
_SET_KEYS = {
    "land_cover": "lc",
    "land_use": "lu",
    "crop_type": "crop",
    "bioregion": "bioregion",
    "eunis_habitat": "eunis",
    "country": "nuts",
}


@dataclass(frozen=True)
class ClassSpec:
    """A target class: display name, optional explicit prompts, optional map colour (checked by
    ``pipeline.maps.style``)."""

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
            if not isinstance(self.color, str):
                raise TimeSenCLIPError(f"class {self.name!r}: colour {self.color!r} is not text")
            # Whether it is a colour is pipeline.maps.style's rule, checked where maps are styled.
            object.__setattr__(self, "color", self.color.strip().lower())


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
    """A built-in class set, in logit order, with the reference prompts."""
    return [ClassSpec(e["name"], tuple(e["prompts"])) for e in reference_classes(_set_key(name))]


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
