"""The environment a run's Dask worker processes start with, and what they import as they start;
the fork server local workers start from, with both."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from multiprocessing import forkserver

# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ at 64 KiB, so freed memory goes back
# to the system at once. Setting it also fixes glibc's mmap threshold at 128 KiB: every array of
# a composite window is then a fresh mapping, faulted in page by page, and compositing costs
# 1.7-1.9x the CPU (bench/cube.py). These are the values glibc's own dynamic thresholds reach.
# And two malloc arenas, not glibc's 8 per core: each of a worker's 16 reader threads then
# decoded into an arena of its own, which kept what it freed, and the worker grew by about
# 200 MB over the blocks of months of a run at 300 scenes.
MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    "MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
    "MALLOC_ARENA_MAX": 2,
}
PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
# What a worker (local, or of a batch job) imports as it starts, not at its first task: GDAL and
# the compositing task, then torch and the encoder beside the first tasks
# (``pipeline.run.worker_start``).
WORKER_MODULES = ("pipeline.run.worker_start",)
# And beside its first tasks, in a thread of the worker's: the medians' compiled loop (numba), the
# chunk tasks (torch and the encoder).
LATER = ("pipeline.cube.median_kernel", "pipeline.run.worker_tasks")
FORK_METHOD = "distributed.worker.multiprocessing-method"


def worker_environ() -> dict:
    """Dask's ``distributed.nanny.pre-spawn-environ`` (set before a worker process starts),
    with glibc's malloc thresholds of :data:`MALLOC`."""
    import dask

    return {**dask.config.get(PRE_SPAWN, {}), **MALLOC}


def worker_environ_export() -> str:
    """A job-script line that gives a batch job's workers :func:`worker_environ` (dask reads a
    Python literal from the variable)."""
    import shlex

    value = shlex.quote(repr(worker_environ()))
    return f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={value}"


@contextlib.contextmanager
def worker_forkserver() -> Iterator[None]:
    """Multiprocessing's fork server, started now with :func:`worker_environ` and every module a
    worker imports (``WORKER_MODULES``, ``LATER``), for local workers to start from (Dask's
    ``FORK_METHOD`` "forkserver"); stopped, and reaped, at the end.

    A spawned worker imports for seconds (torch alone takes 3 on a slow core) once its nanny
    starts it, after the scheduler and while the run plans, all on one core of the client; the
    server does those imports at once on a core the client leaves idle, and a worker forked
    from it starts with them done. Reaped, its workers' CPU time counts in the client's
    children's, as a spawned worker's does (``time``, ``bench/cube.py``)."""
    server = forkserver._forkserver
    server.set_forkserver_preload([*WORKER_MODULES, *LATER])
    # The server inherits this process's environment as it starts (glibc reads MALLOC_* then);
    # this process keeps its own.
    environ = {name: str(value) for name, value in worker_environ().items()}
    before = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        server.ensure_running()
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    try:
        yield
    finally:
        # multiprocessing has no public stop: this closes the server's pipe, waits for it to exit
        # (its workers have, with their cluster) and removes its socket, as CPython's tests do.
        server._stop()
