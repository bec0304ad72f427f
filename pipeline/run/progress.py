"""Results of cluster tasks as they finish, and the watch that ends a run making no progress."""

from __future__ import annotations

import time
from collections.abc import Iterator

from pipeline.run.cluster_errors import ClusterFailureError, cluster_failure_message
from pipeline.workflow.schema import Workflow
from timesenclip.common.errors import TimeSenCLIPError


def finished(queue, watch: ProgressWatch, region: str) -> Iterator[tuple]:
    """``(future, result)`` for the futures of ``queue`` (an ``as_completed(with_results=True,
    raise_errors=False)``) as they finish, more being added meanwhile, while ``watch`` checks that
    the cluster still makes progress.

    The queue fetches each result in the background as soon as its task ends: a result whose
    worker died meanwhile is recomputed by the scheduler without ever blocking this loop.
    """
    while not queue.is_empty():
        batch = queue.next_batch(block=False) if queue.has_ready() else []
        if not batch:
            watch.check(region)
            time.sleep(0.05)
            continue
        watch.progressed()
        for future, outcome in batch:
            yield future, task_result(future, outcome, region)


class ProgressWatch:
    """Ends a run that makes no progress: no task finished for ``stall`` s, or no worker for
    ``no_worker`` s (every worker lost, say), each with a message saying so."""

    def __init__(self, client, stall: float, no_worker: float) -> None:
        self.client, self.stall, self.no_worker = client, stall, no_worker
        self.last = time.monotonic()
        self.alone_since: float | None = None
        self.checked = 0.0

    @classmethod
    def of(cls, client, workflow: Workflow) -> ProgressWatch:
        return cls(client, workflow.dask.stall_timeout, workflow.dask.no_worker_timeout)

    def progressed(self) -> None:
        self.last = time.monotonic()

    def check(self, region: str) -> None:
        now = time.monotonic()
        if now - self.checked < 1.0:
            return
        self.checked = now
        if self.client.nthreads():
            self.alone_since = None
        else:
            self.alone_since = self.alone_since or now
            if now - self.alone_since > self.no_worker:
                raise ClusterFailureError(
                    f"the Dask cluster has had no worker for {self.no_worker:.0f} s while mapping "
                    f"region {region!r}: start workers (or check why they died), then run the "
                    "same command again to resume."
                )
        if now - self.last > self.stall:
            raise ClusterFailureError(
                f"no task finished for {self.stall:.0f} s while mapping region {region!r}: the "
                "workers may be stuck on reads or starved of memory. Check the Dask dashboard, "
                "raise dask.stall_timeout if chunks are simply slow, and run the same command "
                "again to resume."
            )


def task_result(future, outcome, region: str):
    """A finished task's result, from what ``as_completed`` fetched: a task's own error is
    raised as it is when it is ours, and a cluster failure becomes one clear error (exit 3)."""
    if future.status not in ("error", "cancelled"):
        return outcome
    error = outcome[1] if isinstance(outcome, tuple) else outcome  # (type, error, traceback)
    if isinstance(error, TimeSenCLIPError):
        raise error
    message = cluster_failure_message(error, region)
    if message is None:
        raise error
    raise ClusterFailureError(message) from None
