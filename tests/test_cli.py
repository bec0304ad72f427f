"""The command line: help on every verb, class listings, validation and user errors."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from encoder.prompts import class_colors, class_set, class_set_names
from pipeline.cli import VERBS, build_parser, main, os_error_message

REPO = Path(__file__).resolve().parents[1]
MONTPELLIER = REPO / "workflows" / "montpellier-2023.yaml"


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
