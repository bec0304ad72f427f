"""What a Dask cluster failure means for the user, in one paragraph, and its exit code.

A run that fails because the cluster did (a worker killed, futures cancelled, the scheduler lost
or silent, no worker left) can be resumed as it is once the cluster is back: such failures end
with ``CLUSTER_EXIT`` (3), where bad input ends with 2.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import traceback

from timesenclip.common.errors import TimeSenCLIPError

CLUSTER_EXIT = 3
_RESUME = "then run the same command again: finished tiles are kept and the run resumes."


class ClusterFailureError(TimeSenCLIPError):
    """The Dask cluster failed under a run; the message says what to check."""

    exit_code = CLUSTER_EXIT


def _raised_by_dask(exc: BaseException) -> bool:
    """Whether the traceback passes through dask, distributed or their event loop (tornado):
    a TimeoutError or connection error from elsewhere (an HTTP read) is not a cluster's."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_globals.get("__name__", "").partition(".")[0] in ("dask", "distributed"):
            return True
    return False


def cluster_failure_message(exc: BaseException, region: str | None = None) -> str | None:
    """One paragraph for a distributed failure (what, where, what to do); None for any other
    error, which the caller handles or lets through."""
    if "distributed" not in sys.modules:
        return None  # nothing can have come from a cluster
    from distributed import KilledWorker
    from distributed.client import ClosedClientError, FutureCancelledError, FuturesCancelledError
    from distributed.comm import CommClosedError
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    where = f"while mapping region {region!r}" if region else "during the run"
    if isinstance(exc, KilledWorker):
        worker = getattr(getattr(exc, "last_worker", None), "address", "a worker")
        return (
            f"Dask workers died {where}: each one that ran the same piece of work ({exc.task}, "
            f"last on {worker}) was lost, most often for want of memory. Lower cube.chunk_size or "
            f"model.batch_size, or give workers more memory (the worker logs say why), {_RESUME}"
        )
    if isinstance(exc, NoWorkerError | NoValidWorkerError):
        return (
            f"no Dask worker was left to run the work {where} (waited {exc.timeout:g} s): the "
            "workers stopped or were never started. Start workers for the scheduler (or let the "
            f"run start a cluster of its own: dask.cluster local, slurm or pbs), {_RESUME}"
        )
    lost = (
        f"the connection to the Dask scheduler was lost {where}: the scheduler stopped or the "
        "network between it and this machine dropped. Check that it runs and can be reached "
        f"(dask.cluster in the workflow, or --cluster), {_RESUME}"
    )
    if isinstance(exc, FutureCancelledError | FuturesCancelledError):
        reasons = (
            {exc.reason}
            if isinstance(exc, FutureCancelledError)
            else {group.reason for group in exc.error_groups}
        )
        if "scheduler-connection-lost" in reasons:
            return lost
        return (
            f"the Dask cluster cancelled the work {where} (reason: {', '.join(sorted(reasons))}): "
            "the scheduler restarted, lost this client or was shut down. Check that the "
            f"scheduler and its workers run, {_RESUME}"
        )
    cancelled = concurrent.futures.CancelledError | asyncio.CancelledError
    if isinstance(exc, cancelled) and _raised_by_dask(exc):
        return (
            f"the Dask cluster cancelled the work {where}: the scheduler restarted, lost this "
            f"client or was shut down. Check that the scheduler and its workers run, {_RESUME}"
        )
    if isinstance(exc, CommClosedError | ClosedClientError) or (
        isinstance(exc, OSError)
        and not isinstance(exc, TimeoutError)
        and exc.errno is None
        and _raised_by_dask(exc)
    ):
        return lost
    if isinstance(exc, TimeoutError) and _raised_by_dask(exc):
        return (
            f"the Dask cluster did not answer in time {where} ({str(exc) or 'timed out'}): the "
            "scheduler or its workers are overloaded, stopped or unreachable. Check them (the "
            "dashboard or worker logs), or raise distributed.comm.timeouts in the Dask config, "
            f"{_RESUME}"
        )
    return None
