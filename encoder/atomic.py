"""Write files so that readers only ever see a complete file or none at all."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.(tmp|scratch)-[0-9a-f]{12}")


def _sibling(path: Path, tag: str, suffix: str = "") -> Path:
    # Hidden, random and in the same folder: os.replace is atomic only within one filesystem.
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(6)}{suffix}")


def _remove_with_sidecars(tmp: Path) -> None:
    # GDAL may leave files named after the temporary one (.aux.xml, .ovr.tmp): remove them too.
    for leftover in tmp.parent.iterdir():
        if leftover.name.startswith(tmp.name):
            leftover.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The block must create the temporary file. When the block raises, the temporary file (and any
    file GDAL named after it) is deleted and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        _fsync(tmp)  # the data must be on disk before the name points at it
        os.replace(tmp, path)
    finally:
        _remove_with_sidecars(tmp)


@contextmanager
def scratch_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary working file beside ``path`` that is always deleted afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "scratch", suffix)
    try:
        yield tmp
    finally:
        _remove_with_sidecars(tmp)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files a killed process left under ``folder``; return their paths.

    Only a process that was killed outright leaves them: any other failure cleans up after itself.
    Call this before writing into ``folder`` again, never while another writer uses it.
    """
    folder = Path(folder)
    stale = [p for p in folder.rglob(".*") if p.is_file() and _TEMPORARY.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
