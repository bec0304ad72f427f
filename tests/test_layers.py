"""The import rule (``docs/architecture.md``): stages form one order, imports only run down it,
and no modules import each other. Every import counts, inside functions and TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("timesenclip", "encoder", "pipeline")

# Bottom first. A module may import its own stage or one below it; a name maps to the longest
# prefix listed here (``timesenclip.common`` sits at the bottom, the ``timesenclip`` face on top).
ORDER = (
    ("timesenclip.common",),
    ("encoder",),
    ("pipeline.geo",),
    ("pipeline.search",),
    ("pipeline.cube",),
    ("pipeline.maps",),
    ("pipeline.store",),
    ("pipeline.assess",),
    ("pipeline.workflow",),
    ("pipeline.plan",),
    ("pipeline.run",),
    ("pipeline.commands", "pipeline.cli"),
    ("timesenclip", "pipeline"),
)


def module_files() -> dict[str, Path]:
    """Every module of ours by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def stage(module: str) -> int:
    """Index in ``ORDER`` of the longest listed prefix of ``module``."""
    best, length = -1, -1
    for index, names in enumerate(ORDER):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > length:
                best, length = index, len(name)
    return best


def imports_of(module: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of ours in ``module``; ``from a import b`` names the
    module ``a.b`` when that is a module, else ``a``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # ``import a.b.c`` of a name in a.b
                target = target.rpartition(".")[0]
            if target and target != module:
                found.append((node.lineno, target))
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_stage():
    assert [m for m in MODULES if stage(m) < 0] == []


def test_imports_run_down_the_stages():
    upward = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {target} "
        f"(stage {ORDER[stage(target)][0]} is above {ORDER[stage(m)][0]})"
        for m, edges in GRAPH.items()
        for line, target in edges
        if stage(target) > stage(m)
    ]
    assert upward == [], "\n".join(upward)


def test_no_modules_import_each_other():
    """No cycle of any length: every strongly connected component is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for _, target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                cycles.append(sorted([node, *component]))

    for module in GRAPH:
        if module not in index:
            visit(module)
    described = [
        " <-> ".join(cycle)
        + ": "
        + "; ".join(
            f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
            for m in cycle
            for line, t in GRAPH[m]
            if t in cycle
        )
        for cycle in cycles
    ]
    assert described == [], "\n".join(described)


SUB_PACKAGES = [
    name
    for names in ORDER
    for name in names
    if "." in name and name in MODULES and MODULES[name].stem == "__init__"
]


@pytest.mark.parametrize("package", SUB_PACKAGES)
def test_each_stage_says_what_it_holds_in_one_line(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and "\n" not in doc.strip() and "Uses" in doc, package
