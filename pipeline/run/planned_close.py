"""A worker that closes of its own accord is not a worker that died.

A batch job's workers retire at their lifetime, before the walltime (``pipeline.run.batch``).
Dask first tries to hand a retiring worker's results to another worker; where none can take them
(the job's only workers, all retiring together) the worker closes anyway, and the scheduler then
counts every task assigned to it, queued or running, as one that a worker died running. After a
few turnovers a task that never started fails the run with ``KilledWorker``, as if it had
exhausted its workers' memory. ``PlannedClose`` removes such a worker as retired instead: its
tasks go back to be run elsewhere, and its results are computed again where needed.
``ResultComputedAgain`` keeps the scheduler's error about such a result, asked for before it was
computed again, out of the user's terminal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger(__name__)

# The stimulus of a retirement the worker asked for itself (``Worker.close_gracefully``): its
# lifetime reached, or told to close by its batch job.
GRACEFUL = "worker-close-gracefully-"
GATHER_FAILED = "Couldn't gather keys: %s"
# States of a task whose result is on its way again: the client's gather waits for it.
COMPUTED_AGAIN = {"released", "waiting", "queued", "no-worker", "processing", "memory"}


class PlannedClose(SchedulerPlugin):
    """Removes a worker that could not retire, as retired, before its own close reaches the
    scheduler."""

    name = "timesenclip-planned-close"

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self._removals: set[asyncio.Task] = set()  # held until done: the loop keeps weak refs

    def log_event(self, topic: str, msg) -> None:
        if not (
            isinstance(msg, dict)
            and msg.get("action") == "could-not-retire"
            and str(msg.get("stimulus_id", "")).startswith(GRACEFUL)
        ):
            return
        log.info("worker %s closes without handing its results over: retired", topic)
        # Scheduled now, on the scheduler's loop, so that it runs before the worker's close
        # (sent once the retirement's reply reaches it) is handled as a death.
        removal = asyncio.ensure_future(
            self.scheduler.remove_worker(
                topic, expected=True, close=False, stimulus_id=f"planned-close-{time.time()}"
            )
        )
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)


class ResultComputedAgain(logging.Filter):
    """Leaves out the error the scheduler logs when the client asks for results that went with
    their worker and are being computed again: the client waits for them, nothing failed. A
    result that cannot come back (erred, forgotten) is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        states = record.args if isinstance(record.args, Mapping) else None
        return not (
            record.msg == GATHER_FAILED and states and set(states.values()) <= COMPUTED_AGAIN
        )
