"""YAML configuration files read safely: safe tags only, no duplicate keys, no alias bombs.

Anchors and aliases (``&name`` / ``*name``, ``<<: *name``) are allowed, since configurations use
them to repeat a class list or a section, but the document they expand to is bounded: a few
hundred bytes of nested aliases would otherwise expand to billions of values, and validating,
hashing or printing them would take gigabytes and minutes. The bound is checked on the composed
node graph, where each alias is one shared node, so a bomb is refused in milliseconds.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml

from timesenclip.common.errors import TimeSenCLIPError

MAX_VALUES = 100_000  # after expanding aliases; the example workflows hold about 100
MAX_CHARS = 1_000_000  # of scalar text after expanding aliases
MAX_DEPTH = 50  # nesting levels; configurations need fewer than 10
_TOO_DEEP = f"values nested more than {MAX_DEPTH} levels deep (a configuration needs fewer than 10)"


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, where PyYAML would silently keep the last one, and
    deep nesting, which PyYAML composes by recursion (thousands of '[' end in RecursionError)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, _TOO_DEEP, self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, token_class: type) -> None:
        # The scanner reads up to 1,024 characters ahead inside '[' and '{', in quadratic time:
        # stop nesting here, before the composer would.
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, _TOO_DEEP, self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key.value!r} (first given at line {seen[key.value]})",
                        key.start_mark,
                    )
                seen[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(
    text: str, source: str, error: type[TimeSenCLIPError] = TimeSenCLIPError
) -> tuple[Any, yaml.Node | None]:
    """The document in ``text`` and its node tree (for line numbers; None for an empty file).

    ``source`` names the file in messages ("workflow file x.yaml"); any problem raises ``error``.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_size(node, source, error)
        return loader.construct_document(node), node
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{source} is not valid YAML{where}: {problem}") from None
    except TimeSenCLIPError:
        raise
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise error(f"{source} holds a value that cannot be read: {exc}") from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_size(root: yaml.Node, source: str, error: type[TimeSenCLIPError]) -> None:
    """Refuse a document that expands beyond the bounds, or that contains itself.

    Depth-first over the node graph with each node's expanded size memoised, so the work is
    linear in the file's size however far its aliases would expand.
    """
    sizes: dict[int, tuple[int, int, int]] = {}  # id(node) -> expanded (values, chars, height)
    ancestors: set[int] = set()
    shared = False
    # (node, depth, line of the top-level entry it is reached from, children done)
    stack = [(root, 1, root.start_mark.line + 1, False)]
    while stack:
        node, depth, origin, finished = stack.pop()
        key = id(node)
        if finished:
            ancestors.discard(key)
            below = [sizes[id(c)] for c in _children(node)]
            values = 1 + sum(b[0] for b in below)
            chars = (
                len(node.value) if isinstance(node, yaml.ScalarNode) else sum(b[1] for b in below)
            )
            sizes[key] = (values, chars, 1 + max((b[2] for b in below), default=0))
            if values > MAX_VALUES or chars > MAX_CHARS:
                raise error(_too_large(source, node, shared))
            continue
        if key in ancestors:
            raise error(
                f"{source}: the value at line {node.start_mark.line + 1} contains itself through "
                "an alias (*name inside its own &name); write the value out instead."
            )
        if key in sizes:
            shared = True
        if depth + (sizes[key][2] if key in sizes else 1) - 1 > MAX_DEPTH:
            raise error(
                f"{source}: the value at line {origin} is nested more than {MAX_DEPTH} levels "
                "deep once its aliases (*name) are expanded; a configuration needs fewer than 10."
            )
        if key in sizes:
            continue
        ancestors.add(key)
        stack.append((node, depth, origin, True))
        for child in _children(node):  # not before: an alias used often must cost little
            stack.append(
                (child, depth + 1, child.start_mark.line + 1 if depth == 1 else origin, False)
            )


def _too_large(source: str, node: yaml.Node, shared: bool) -> str:
    where = f"{source}: the value at line {node.start_mark.line + 1}"
    bounds = f"{MAX_VALUES:,} values or {MAX_CHARS:,} characters"
    if shared:
        return (
            f"{where} grows to more than {bounds} once its aliases (*name) are expanded, each use "
            "counted in full. That is refused as an alias bomb: reading it would take gigabytes. "
            "Write the repeated values out, or repeat fewer of them through aliases."
        )
    return (
        f"{where} holds more than {bounds}, far more than a configuration needs: check that it "
        "is the right file."
    )


class _ShortRepr(reprlib.Repr):
    def repr_bytes(self, value: bytes, level: int) -> str:
        return self.repr_str(value, level)  # slices before repr, like str

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 256:  # repr of a huge int is slow, and refused beyond 4300 digits
            return f"<an integer of {value.bit_length()} bits>"
        return super().repr_int(value, level)


_SHORT = _ShortRepr()
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = 100
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters, built without ever
    rendering all of a large value (a long list, a long string, a deep mapping)."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
