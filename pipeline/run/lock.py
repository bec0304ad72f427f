"""One run per output folder: a lock file naming the run that holds it.

``<outputs.dir>/.timesenclip.lock`` holds the host, pid, process start and start time of the run
that writes the folder. It is created atomically (a complete file hard-linked into place, which
works on NFS too), refreshed every ``stale_after / 10`` seconds while the run lives and removed at
its end. A second run fails at once, naming the first. A lock left by a killed run is taken over:
on the same host when its process is gone; from another host when it has not been refreshed for
``stale_after`` seconds (default 10 minutes, environment variable TIMESENCLIP_LOCK_STALE_AFTER).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

LOCK_NAME = ".timesenclip.lock"
STALE_AFTER = 600.0  # seconds without a refresh after which another host's lock is stale


class FolderLockedError(TimeSenCLIPError):
    """The output folder is being written by another run."""


def _process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell a reused pid from the
    original; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ')' may hold spaces


def _pid_namespace() -> str | None:
    """Which pids this process sees (Linux): containers on one host may share a hostname."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return start is None or _process_start(pid) in (start, None)


def _record() -> dict:
    return {
        "host": socket.gethostname(),
        "pid_namespace": _pid_namespace(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
    }


def _read(path: Path) -> dict | None:
    """The lock's record; None when there is no lock. A lock that cannot be parsed was not
    written by a complete ``_create`` and is reported as held by an unknown run."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    return record if isinstance(record, dict) else {}


def _is_stale(path: Path, record: dict, stale_after: float) -> bool:
    here = record.get("host") == socket.gethostname()
    if (
        here
        and record.get("pid_namespace") == _pid_namespace()
        and isinstance(record.get("pid"), int)
    ):
        return not _alive(record["pid"], record.get("process_start"))
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # gone meanwhile: the next attempt takes it
    return age > stale_after


def _create(path: Path, record: dict) -> bool:
    """Put ``record`` at ``path`` unless a lock is there; the lock is complete when it appears."""
    text = json.dumps(record, indent=1) + "\n"
    draft = path.with_name(f"{path.name}.{record['token']}")
    try:
        draft.write_text(text, encoding="utf-8")
    except OSError as err:  # read-only or full: name the folder, not the hidden draft
        with contextlib.suppress(OSError):  # a read-only disk refuses even that
            draft.unlink()
        raise OSError(err.errno, err.strerror, str(path.parent)) from err
    try:
        os.link(draft, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return True
    finally:
        draft.unlink(missing_ok=True)


def _take_over(path: Path, stale: dict) -> None:
    """Move a stale lock out of the way, unless another run replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{secrets.token_hex(6)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another run took it over first
    moved = _read(aside)
    if moved == stale:
        aside.unlink(missing_ok=True)
        log.warning("took over the lock %s of a run that no longer runs: %s", path, stale)
        return
    # Another run broke the stale lock and took the folder between our read and our rename:
    # its lock goes back (unless a third run got in, which the caller then finds).
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.link(aside, path)
    aside.unlink(missing_ok=True)


def _describe(record: dict, path: Path) -> str:
    if not record:
        return f"an unknown run (the lock file {path} cannot be read)"
    return (
        f"the run with pid {record.get('pid')} on host {record.get('host')}, started "
        f"{record.get('started')} (lock file {path})"
    )


def _remove_leftovers(folder: Path) -> None:
    """Drafts and set-aside locks of runs killed while locking. A run locking right now holds
    its own for microseconds; the inode change time (set by creation and by rename) tells."""
    for leftover in folder.glob(f"{LOCK_NAME}.*"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - leftover.stat().st_ctime > 60:
                leftover.unlink()


def _stale_after(value: float | None) -> float:
    if value is not None:
        return value
    text = os.environ.get("TIMESENCLIP_LOCK_STALE_AFTER")
    try:
        return float(text) if text else STALE_AFTER
    except ValueError:
        raise TimeSenCLIPError(
            f"TIMESENCLIP_LOCK_STALE_AFTER={text!r} is not a number of seconds"
        ) from None


def acquire(folder: Path, stale_after: float) -> tuple[Path, dict]:
    """Create ``folder``'s lock or raise ``FolderLockedError`` naming the run holding it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    record = _record()
    for _ in range(5):  # each round either takes the lock, fails, or clears a stale one
        if _create(path, record):
            _remove_leftovers(folder)
            return path, record
        held = _read(path)
        if held is None:
            continue  # released meanwhile
        if not _is_stale(path, held, stale_after):
            raise FolderLockedError(
                f"{folder} is being written by {_describe(held, path)}. Wait for that run to "
                "finish, or write to another outputs.dir; if you are sure it no longer runs, "
                f"delete {path} and run again."
            )
        _take_over(path, held)
    raise FolderLockedError(
        f"cannot lock {folder}: other runs keep taking its lock {path}; run one at a time."
    )


def release(path: Path, record: dict) -> None:
    """Remove the lock if it is still ours (a lock taken over as stale is not ours any more)."""
    if _read(path) == record:
        path.unlink(missing_ok=True)
    else:
        log.warning("the lock %s was taken over by another run while this one ran", path)


@contextlib.contextmanager
def output_lock(folder: Path | str, stale_after: float | None = None) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block, refreshing it so other hosts see it is alive."""
    stale_after = _stale_after(stale_after)
    path, record = acquire(Path(folder), stale_after)
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(stale_after / 10):
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    thread = threading.Thread(target=refresh, name="timesenclip-lock", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        release(path, record)
