"""One run per output folder: the lock holds against a live process, not against a dead one."""

import json
import os
import signal
import socket
import time

import pytest

from fixtures.lock_holder import hold_lock
from pipeline.run.lock import LOCK_NAME, FolderLockedError, acquire, output_lock, release


def test_a_second_process_is_refused_naming_the_first(tmp_path):
    holder = hold_lock(tmp_path / "out")
    try:
        with pytest.raises(FolderLockedError) as info, output_lock(tmp_path / "out"):
            pass
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert str(tmp_path / "out" / LOCK_NAME) in message and "Wait for that run" in message
        assert holder.poll() is None  # the holder was left alone
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert os.listdir(tmp_path / "out") == []  # released at the end, no drafts left
    with output_lock(tmp_path / "out") as path:  # free again
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind
    with output_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
    path, record = acquire(tmp_path, stale_after=600)
    assert record["process_start"]  # Linux: the pid's start time tells reuse apart
    # a lock of this host whose pid is alive, but a process that started at another time
    path.write_text(json.dumps({**record, "process_start": "1", "token": "dead"}))
    path, mine = acquire(tmp_path, stale_after=600)
    assert mine["token"] != "dead" and json.loads(path.read_text()) == mine
    release(path, mine)


def test_another_hosts_lock_is_stale_only_when_no_longer_refreshed(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00"}))
    with pytest.raises(FolderLockedError, match="pid 1 on host elsewhere, started 2026-01-01"):
        acquire(tmp_path, stale_after=600)
    old = time.time() - 601
    os.utime(lock, (old, old))
    path, record = acquire(tmp_path, stale_after=600)
    assert json.loads(path.read_text()) == record and record["host"] == socket.gethostname()


def test_an_unreadable_lock_is_refused_until_old(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text("{")
    with pytest.raises(FolderLockedError, match="an unknown run"):
        acquire(tmp_path, stale_after=600)
    os.utime(lock, (0, 0))
    release(*acquire(tmp_path, stale_after=600))


def test_release_keeps_a_lock_another_run_took_over(tmp_path):
    path, record = acquire(tmp_path, stale_after=600)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 2}))
    release(path, record)
    assert json.loads(path.read_text())["host"] == "elsewhere"


def test_a_held_lock_is_refreshed(tmp_path):
    with output_lock(tmp_path, stale_after=0.5) as path:
        os.utime(path, (0, 0))
        deadline = time.monotonic() + 30
        while path.stat().st_mtime == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > 0


def test_stale_after_from_the_environment(tmp_path, monkeypatch):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    old = time.time() - 120
    os.utime(lock, (old, old))
    monkeypatch.setenv("TIMESENCLIP_LOCK_STALE_AFTER", "3600")
    with pytest.raises(FolderLockedError), output_lock(tmp_path):
        pass
    monkeypatch.setenv("TIMESENCLIP_LOCK_STALE_AFTER", "60")
    with output_lock(tmp_path):
        pass
    monkeypatch.setenv("TIMESENCLIP_LOCK_STALE_AFTER", "soon")
    with (
        pytest.raises(ValueError, match="TIMESENCLIP_LOCK_STALE_AFTER='soon'"),
        output_lock(tmp_path),
    ):
        pass


def test_leftovers_of_a_kill_while_locking_are_removed_once_old(tmp_path, monkeypatch):
    draft = tmp_path / f"{LOCK_NAME}.0123abcd"  # killed between writing its draft and linking
    draft.write_text("{}")
    release(*acquire(tmp_path, stale_after=600))
    assert draft.exists()  # as young as one of a run locking right now: kept
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 120)  # its change time cannot be set back
    release(*acquire(tmp_path, stale_after=600))
    assert os.listdir(tmp_path) == []
