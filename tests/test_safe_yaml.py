"""Configuration YAML: aliases within bounds work, alias bombs and deep nesting are refused fast."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from encoder.training.config import TrainConfigError, load_config
from pipeline.workflow.load import WorkflowError, load_workflow
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.safe_yaml import MAX_VALUES, parse_yaml, short_repr

ROOT = Path(__file__).resolve().parents[1]


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each level a list of ``width`` aliases of the level below."""
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def merges(levels: int = 20) -> str:
    """The same through merge keys, which PyYAML flattens into ever longer key lists."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, levels + 1):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}")
    return "\n".join(lines) + "\n"


LONG_TEXT = (
    f'a: &a "{"x" * 1000}"\nb: &b [{", ".join(["*a"] * 100)}]\nc: &c [{", ".join(["*b"] * 100)}]\n'
)

BOMBS = {
    "laughs": (laughs(), 7, "alias bomb"),
    "merge keys": (merges(), 15, "alias bomb"),
    "long text": (LONG_TEXT, 3, "alias bomb"),
    "recursive": ("a: &a [1, *a]\n", 1, "contains itself"),
    "deep flow": ("a: " + "[" * 20000 + "]" * 20000 + "\n", 1, "nested more than 50 levels"),
    "deep block": (
        "a:\n" + "".join(" " * i + "b:\n" for i in range(400)),
        51,
        "nested more than 50 levels",
    ),
    "deep aliases": (
        "a: &a " + "[" * 30 + "]" * 30 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n",
        2,
        "nested more than 50 levels",
    ),
}


@pytest.mark.parametrize(("text", "line", "reason"), BOMBS.values(), ids=BOMBS.keys())
def test_bombs_are_refused_naming_file_and_line(text, line, reason):
    with pytest.raises(TimeSenCLIPError) as info:
        parse_yaml(text, "config.yaml")
    message = str(info.value)
    assert message.startswith("config.yaml")
    assert f"line {line}" in message and reason in message


def test_aliases_within_the_bound_expand_as_usual():
    text = textwrap.dedent("""\
        classes: &classes [forest, water, {name: vineyard, color: "#7b2d8b"}]
        defaults: &defaults {templates: class_names, classes: *classes}
        tasks:
          - {<<: *defaults, name: a}
          - {<<: *defaults, name: b, templates: sentinel}
        """)
    data, node = parse_yaml(text, "x")
    assert data["tasks"] == [
        {"templates": "class_names", "classes": data["classes"], "name": "a"},
        {"templates": "sentinel", "classes": data["classes"], "name": "b"},
    ]
    assert isinstance(node, yaml.MappingNode)
    # a document just under the bound is read: 1 + 3 * (1 + 3 * ...) values
    small = laughs(levels=9, width=3)
    assert 3**9 < MAX_VALUES < 3**11
    assert parse_yaml(small, "x")[0]["l9"][0][0][0][0][0][0][0][0] == ["lol"] * 3


def test_duplicate_keys_and_unreadable_values():
    with pytest.raises(TimeSenCLIPError, match=r"x is not valid YAML at line 2.*duplicate key 'a'"):
        parse_yaml("a: 1\na: 2\n", "x")
    with pytest.raises(TimeSenCLIPError, match="x holds a value that cannot be read: Exceeds"):
        parse_yaml(f"year: {'1' * 5000}\n", "x")
    assert parse_yaml("", "x") == (None, None)


def test_short_repr_never_renders_a_huge_value():
    huge = {"a": ["x" * 10**7] * 10**6, "n": int("f" * 100_000, 16), "b": b"\0" * 10**7}
    text = short_repr(huge)
    assert len(text) <= 120 and text.startswith("{'a': ['xxx")
    assert "integer of 400000 bits" in short_repr(huge["n"])
    assert short_repr(b"\0" * 10**7).startswith("b'\\x00") and len(short_repr(b"\0" * 10**7)) < 120
    assert short_repr([1, "a", None]) == "[1, 'a', None]"


def test_workflow_and_training_config_refuse_bombs(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs())
    with pytest.raises(WorkflowError, match=rf"workflow file {path}: the value at line 7 grows"):
        load_workflow(path)
    with pytest.raises(TrainConfigError, match=rf"training config {path}: the value at line 7"):
        load_config(path)


def _peak_memory_kib(path: Path) -> int:
    """VmHWM of a fresh process that validates ``path`` (a user error is expected or not)."""
    code = textwrap.dedent(f"""\
        from pipeline.workflow.load import load_workflow, WorkflowError
        try:
            load_workflow({str(path)!r})
        except WorkflowError:
            pass
        status = open("/proc/self/status").read()
        print(status.split("VmHWM:")[1].split()[0])
        """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_a_bomb_costs_no_more_memory_than_a_good_workflow(tmp_path):
    """A sanity bound, not a benchmark: before the bound, this file took 3 GB."""
    good = ROOT / "workflows" / "montpellier-2023.yaml"
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(good.read_text() + laughs())
    assert _peak_memory_kib(bomb) <= _peak_memory_kib(good) + 100 * 1024
