"""The environment a run's Dask worker processes start with, and what they import as they start."""

from __future__ import annotations

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
