"""Write files so that readers only ever see a complete file or none at all.

A failed write leaves no temporary behind, and a write that failed for want of disk space or
because the disk is read-only raises an ``OSError`` naming the file meant (not the temporary), so
the command line can say what happened where.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.(tmp|scratch)-[0-9a-f]{12}")
_NEARLY_FULL = 16 * 2**20  # bytes free below which a failed write is put down to a full disk


def _sibling(path: Path, tag: str, suffix: str = "") -> Path:
    # Hidden, random and in the same folder: os.replace is atomic only within one filesystem.
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(6)}{suffix}")


def _remove_with_sidecars(tmp: Path) -> None:
    # GDAL may leave files named after the temporary one (.aux.xml, .ovr.tmp): remove them too.
    try:
        leftovers = [p for p in tmp.parent.iterdir() if p.name.startswith(tmp.name)]
    except FileNotFoundError:
        return  # the folder itself is gone
    for leftover in leftovers:
        if leftover.is_dir() and not leftover.is_symlink():  # a scratch folder, with its files
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _disk_error(err: Exception, path: Path, tmp: Path) -> OSError | None:
    """The ``OSError`` a failed write of ``path`` stands for, when it is not one already.

    Python names no file when a write runs out of space, and may name the hidden temporary file;
    GDAL (through rasterio, which this package does not import) raises errors without an errno,
    e.g. "TIFFAppendToStrip: Write error", put down here to a full disk when it is nearly full.
    """
    if isinstance(err, OSError) and err.errno is not None:
        if err.filename is not None and not Path(err.filename).name.startswith(tmp.name):
            return None
        return OSError(err.errno, err.strerror, str(path))
    if type(err).__module__.partition(".")[0] != "rasterio":
        return None
    try:
        full = shutil.disk_usage(path.parent).free < _NEARLY_FULL
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


@contextmanager
def _temporary(path: Path, tag: str, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path``, deleted afterwards; failures named as ``_disk_error``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, tag, suffix)
    try:
        yield tmp
    except Exception as err:
        meant = _disk_error(err, path, tmp)  # before the clean-up frees the space
        if meant is None:
            raise
        raise meant from err
    finally:
        _remove_with_sidecars(tmp)


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
    with _temporary(path, "tmp") as tmp:
        yield tmp
        _fsync(tmp)  # the data must be on disk before the name points at it
        os.replace(tmp, path)


@contextmanager
def scratch_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary working path beside ``path`` (a file, or a folder the block makes)
    that is always deleted afterwards."""
    with _temporary(Path(path), "scratch", suffix) as tmp:
        yield tmp


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def set_aside(path: Path | str) -> Path:
    """Rename ``path`` (a file or folder) to a hidden scratch name beside it, as
    ``scratch_path`` names its own, and return that: to be deleted at leisure, while a new
    ``path`` may be written meanwhile."""
    path = Path(path)
    return path.rename(_sibling(path, "scratch"))


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files a killed process left under ``folder``; return their paths.

    Only a process that was killed outright leaves them: any other failure cleans up after itself.
    Call this before writing into ``folder`` again, never while another writer uses it (a run
    holds its output folder's lock, ``pipeline.run.lock``, while it does).
    """
    folder = Path(folder)
    stale = [p for p in folder.rglob(".*") if p.is_file() and _TEMPORARY.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
