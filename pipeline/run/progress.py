"""Results of cluster tasks as they finish, the watch that ends a run making no progress, and
the progress a user sees: bars on a terminal, plain lines in a batch job's log."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TextIO

from pipeline.run.cluster import RunCluster
from pipeline.run.cluster_errors import ClusterFailureError, cluster_failure_message
from pipeline.workflow.jobs import BATCH_SYSTEMS
from pipeline.workflow.schema import Workflow
from timesenclip.common.errors import TimeSenCLIPError

LINE_INTERVAL = 60.0  # seconds between two progress lines where the output is not a terminal


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

    def __init__(
        self,
        client,
        stall: float,
        no_worker: float,
        dashboard: str | None = None,
        batch: bool = False,
    ) -> None:
        self.client, self.stall, self.no_worker = client, stall, no_worker
        self.dashboard, self.batch = dashboard, batch
        self.last = time.monotonic()
        self.alone_since: float | None = None
        self.checked = 0.0

    @classmethod
    def of(cls, cluster: RunCluster, workflow: Workflow) -> ProgressWatch:
        config = workflow.dask
        return cls(
            cluster.client,
            config.stall_timeout,
            config.no_worker_seconds,
            cluster.dashboard,
            cluster.kind in BATCH_SYSTEMS,
        )

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
                advice = (
                    "its jobs may still wait in the queue (squeue or qstat says why) or fail as "
                    "they start (their logs are in dask.jobs.log_directory); raise "
                    "dask.no_worker_timeout for a long queue"
                    if self.batch
                    else "start workers (or check why they died)"
                )
                raise ClusterFailureError(
                    f"the Dask cluster has had no worker for {self.no_worker:.0f} s while mapping "
                    f"region {region!r}: {advice}, then run the same command again to resume."
                )
        if now - self.last > self.stall:
            dashboard = f" ({self.dashboard})" if self.dashboard else ""
            raise ClusterFailureError(
                f"no task finished for {self.stall:.0f} s while mapping region {region!r}: the "
                f"workers may be stuck on reads or starved of memory. Check the Dask "
                f"dashboard{dashboard}, raise dask.stall_timeout if chunks are simply slow, and "
                "run the same command again to resume."
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


class RegionProgress:
    """Tiles and chunks done of one region: tqdm bars where the output is a terminal; else
    (a batch job's log, a file) one plain line every ``interval`` s and one at the end, as
    carriage-return bars would fill a log with overwritten lines."""

    def __init__(
        self,
        region: str,
        tiles: int,
        chunks: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = LINE_INTERVAL,
    ) -> None:
        self.region, self.enabled, self.interval = region, enabled, interval
        self.stream = stream or sys.stderr
        self.totals, self.done = {"tiles": tiles, "chunks": chunks}, {"tiles": 0, "chunks": 0}
        self.bars: dict = {}
        self.started = self.written = time.monotonic()

    def __enter__(self) -> RegionProgress:
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bars = {
                kind: tqdm(
                    total=total, desc=f"{self.region} {kind}", unit=kind[:-1], file=self.stream
                )
                for kind, total in self.totals.items()
            }
        elif self.enabled:
            self._line()
        return self

    def update(self, kind: str) -> None:
        """One more of ``kind`` (tiles or chunks) done."""
        self.done[kind] += 1
        if kind in self.bars:
            self.bars[kind].update()
        elif self.enabled and time.monotonic() - self.written >= self.interval:
            self._line()

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.enabled and not self.bars and exc[0] is None:
            self._line()

    def _line(self) -> None:
        self.written = now = time.monotonic()
        counts = ", ".join(f"{self.done[k]}/{self.totals[k]} {k}" for k in self.totals)
        self.stream.write(f"{self.region}: {counts} done ({now - self.started:.0f} s)\n")
        self.stream.flush()
