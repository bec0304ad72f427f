"""Readable validation errors of YAML configs (workflows and training configs), all at once.

One line per problem: ``<field path> (line N): got <value>; <what is allowed>``, the line found in
the YAML node tree the file was parsed into (``timesenclip.common.safe_yaml.parse_yaml``).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from timesenclip.common.safe_yaml import short_repr

MAX_PROBLEMS = 20  # listed in one error; a file with more is mostly the wrong file


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def problem_report(
    exc: ValidationError,
    root: type[BaseModel],
    node: yaml.Node | None,
    subject: str,
    hint: str = "",
) -> str:
    """``<subject> has N problem(s):`` and one line per problem (at most :data:`MAX_PROBLEMS`),
    then ``hint`` on a line of its own."""
    errors = exc.errors(include_url=False)
    problems = [describe(err, root, node) for err in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - MAX_PROBLEMS:,} more")
    lines = [f"{subject} has {len(errors)} problem(s):", *(f"  - {p}" for p in problems)]
    return "\n".join([*lines, hint] if hint else lines)


def describe(err: Any, root: type[BaseModel], node: yaml.Node | None) -> str:
    """``<field path> (line N): got <value>; <what is allowed>`` for one pydantic error."""
    loc, kind, value = err["loc"], err["type"], err.get("input")
    path, owner = _walk(root, loc, extra=kind == "extra_forbidden")
    line = _yaml_line(node, loc)
    where = f"{path} (line {line})" if line else path
    if kind == "missing":
        return f"{where}: missing; this field is required"
    if kind == "extra_forbidden":
        allowed = list(owner.model_fields) if owner else []
        return (
            f"{where}: got {short_repr(value)}; unknown key{did_you_mean(loc[-1], allowed)}, "
            f"allowed keys: {', '.join(allowed)}"
        )
    if kind == "literal_error":
        return f"{where}: got {short_repr(value)}; allowed: {err['ctx']['expected']}"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("got "):
        return f"{where}: {msg}"
    return f"{where}: got {short_repr(value)}; {msg[:1].lower()}{msg[1:]}"


def _walk(
    root: type[BaseModel], loc: tuple[Any, ...], extra: bool
) -> tuple[str, type[BaseModel] | None]:
    """Readable path of an error location, without pydantic's union tags, and the model owning
    its last key (for listing the allowed keys)."""
    model: type[BaseModel] | None = root
    owner, path = model, ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif model is not None and part in model.model_fields:
            owner = model
            path += f".{part}" if path else part
            model = _inner_model(model.model_fields[part].annotation)
        elif extra and i == len(loc) - 1:
            owner = model
            path += f".{part}" if path else str(part)
    return path or "(top level)", owner


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _inner_model(arg)) is not None:
            return found
    return None


def _yaml_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest part of ``loc`` present in the YAML node tree."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                continue  # a union tag, or a missing key: keep the parent's line
            line, node = match[0].start_mark.line + 1, match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line
