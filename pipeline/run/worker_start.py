"""What a worker imports as it starts (Dask's ``preload``): the compositing task before it takes
any task; in a thread, the medians' compiled loop (numba, about a second) and the chunk tasks
(torch and the encoder, seconds of imports). A local worker forked from its fork server
(``worker_environ.worker_forkserver``) finds them all imported already.

A run's first tasks composite (``pipeline.run.composite_tasks``), so the worker joins the
cluster and takes them while the rest loads: their first reads need neither, and a task that
needs one meanwhile waits for it at its import, as it would at any import. A heartbeat that the
worker's own close cuts off is not reported as an error (``HeartbeatAtClose``).
"""

from __future__ import annotations

import importlib
import logging
import threading

from distributed.core import Status

import pipeline.run.composite_tasks  # noqa: F401  (imported now: the first tasks run it)
from pipeline.run.worker_environ import LATER
from timesenclip.common.quick_exit import freeze_at_exit

HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"

freeze_at_exit()  # a worker's exit is part of its cluster's close


def dask_setup(worker) -> None:
    """Start importing ``LATER`` beside the worker's first tasks, in that order; keep a close's
    cut-off heartbeat out of the log."""
    logging.getLogger("distributed.worker").addFilter(HeartbeatAtClose(worker))
    threading.Thread(target=_import_later, name="timesenclip-imports", daemon=True).start()


def _import_later() -> None:
    for name in LATER:
        importlib.import_module(name)


class HeartbeatAtClose(logging.Filter):
    """Leaves out the error (and traceback) Dask logs when the worker's close cuts off a heartbeat
    in flight, a race in distributed that a run whose plan fails meets often: the cluster closing
    its own worker is no error to report in the user's terminal."""

    def __init__(self, worker) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            self.worker.status in (Status.closing, Status.closed)
            and record.getMessage().startswith(HEARTBEAT_FAILED)
        )
