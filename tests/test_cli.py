"""The command line: help on every verb, class listings, validation and user errors."""

from __future__ import annotations

import argparse
import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from encoder.classes import template_set_names
from encoder.prompts import class_set, class_set_names
from pipeline.cli import VERBS, build_parser, main, os_error_message
from pipeline.maps.style import class_colors
from timesenclip.common.version import package_version

REPO = Path(__file__).resolve().parents[1]
MONTPELLIER = REPO / "workflows" / "montpellier-2023.yaml"
SLURM_EXAMPLE = REPO / "workflows" / "cluster-europe.yaml"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"timesenclip {verb}" in capsys.readouterr().out


def test_console_script_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "classes"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0
    assert "land_cover" in result.stdout


def test_classes_lists_sets_and_members(capsys):
    assert main(["classes"]) == 0
    listing = capsys.readouterr().out
    for name in class_set_names():
        assert f"{name}" in listing and f"{len(class_set(name)):3d} classes" in listing
    assert main(["classes", "eunis_habitat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    classes = class_set("eunis_habitat")
    assert len(lines) == 44
    assert lines[0].split(None, 2) == ["1", class_colors(classes)[0], classes[0].name]


def test_unknown_class_set_is_a_clear_error(capsys):
    assert main(["classes", "land_cuver"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "land_cover" in err and "Traceback" not in err


def test_validate_accepts_the_readme_job(capsys):
    assert main(["validate", str(MONTPELLIER)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "montpellier" in out and "land_cover, habitat, custom" in out


def test_validate_names_the_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(MONTPELLIER.read_text().replace("year: 2023", "year: 1999"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "year" in err and "1999" in err and "Traceback" not in err


def test_missing_workflow_file(capsys):
    assert main(["validate", "no-such-workflow.yaml"]) == 2
    assert "no-such-workflow.yaml" in capsys.readouterr().err


def _subparsers():
    parser = build_parser()
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, group.choices


def test_every_argument_of_every_verb_has_help():
    parser, verbs = _subparsers()
    assert set(verbs) == set(VERBS)
    for name, sub in [("timesenclip", parser), *verbs.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
            # A help text sends nobody to documents that do not exist.
            assert "see the docs" not in action.help, (name, action.dest)


def test_templates_option_lists_its_choices(capsys):
    for verb in ("classify", "evaluate"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for name in template_set_names():
            assert name in text
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "store.zarr", "--classes", "land_cover", "--templates", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_train_help_points_to_an_existing_readme_section():
    _, verbs = _subparsers()
    (config,) = [a for a in verbs["train"]._actions if a.dest == "config"]
    section = re.search(r"'([^']+)'", config.help).group(1)
    assert f"## {section}" in (REPO / "README.md").read_text()


def test_bare_command_lists_the_verbs(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in VERBS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"timesenclip {package_version()}"


# Light verbs read YAML and list names: they must not load torch, open_clip or dask, which take
# seconds and about a gigabyte. A fresh interpreter shows what each verb really imports.
LIGHT = """
import sys
from pipeline.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
heavy = {{m.split(".")[0] for m in sys.modules}} & {{"torch", "open_clip", "dask", "distributed"}}
print("HEAVY", sorted(heavy))
"""


def test_light_verbs_import_no_torch_open_clip_or_dask():
    argvs = [
        ["--help"],
        ["--version"],
        [],
        ["validate", str(MONTPELLIER)],
        ["validate", str(SLURM_EXAMPLE)],  # checks dask-jobqueue is there without importing it
        ["classes"],
        ["classes", "eunis_habitat"],
        *[[verb, "--help"] for verb in sorted(VERBS)],
    ]
    done = subprocess.run(
        [sys.executable, "-c", LIGHT.format(argvs=argvs)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("valid (2023") == 2 and "Woodland" not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/maps/a.tif"), "writable for you"),
        (OSError(errno.EROFS, "Read-only file system", "/maps"), "on a writable disk"),
        (OSError(errno.ENOSPC, "No space left on device", "/maps/a.tif"), "free space"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/maps"), "check the path"),
    ],
)
def test_disk_and_permission_errors_are_one_paragraph(error, advice, monkeypatch, capsys):
    def write(args):
        raise error

    monkeypatch.setitem(VERBS, "classes", write)
    assert main(["classes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {error.strerror}: {error.filename}. To fix it, ")
    assert advice in err and "run the same command again" in err and err.count("\n") == 1


def test_other_os_errors_are_bugs_and_keep_their_traceback(monkeypatch):
    def fail(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setitem(VERBS, "classes", fail)
    assert os_error_message(OSError(errno.EBADF, "Bad file descriptor")) is None
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["classes"])
