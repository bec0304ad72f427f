"""A worker that closes of its own accord, with no other worker to take its results, costs the
tasks it held no attempt (``PlannedClose``): with Dask's own count they fail as if it had died.
Results it took along are computed again without an error in the user's terminal."""

import asyncio
import logging
import time

import dask
import pytest
from distributed import Client, KilledWorker, Scheduler, Worker

from pipeline.run.planned_close import GATHER_FAILED, PlannedClose, ResultComputedAgain


async def close_gracefully_while_a_task_runs(planned: bool):
    """One worker holding a result and running a task closes gracefully (as at its lifetime);
    a new worker then joins. The running task's result, or the error it ended with."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        async with (
            Scheduler(dashboard_address=":0") as scheduler,
            Client(scheduler.address, asynchronous=True) as client,
        ):
            if planned:
                scheduler.add_plugin(PlannedClose(scheduler))
            async with Worker(scheduler.address, nthreads=1) as first:
                held = client.submit(sum, [1, 2])  # a result only this worker holds
                await held
                running = client.submit(time.sleep, 0.5, key="running")
                deadline = time.monotonic() + 30
                while not first.state.executing:
                    assert time.monotonic() < deadline, "the task never started"
                    await asyncio.sleep(0.01)
                await first.close_gracefully(reason="worker-lifetime-reached")
            async with Worker(scheduler.address, nthreads=1):
                try:
                    return await asyncio.wait_for(running, 30), await held
                except KilledWorker as err:
                    return err


@pytest.mark.timeout(120)
def test_a_worker_closing_at_its_lifetime_hands_its_tasks_back_uncounted():
    assert asyncio.run(close_gracefully_while_a_task_runs(planned=True)) == (None, 3)


@pytest.mark.timeout(120)
def test_without_it_dask_counts_the_close_as_a_death():
    """The case the plugin exists for, as Dask has it: one attempt allowed, none left."""
    assert isinstance(asyncio.run(close_gracefully_while_a_task_runs(planned=False)), KilledWorker)


def test_results_being_computed_again_are_no_error_but_lost_ones_are(caplog):
    log = logging.getLogger("distributed.scheduler.test-planned-close")
    log.addFilter(ResultComputedAgain())
    with caplog.at_level(logging.ERROR, logger=log.name):
        log.error(GATHER_FAILED, {"process_chunk-1": "waiting", "finish_tile-2": "processing"})
        log.error(GATHER_FAILED, {"process_chunk-1": "waiting", "finish_tile-2": "erred"})
        log.error(GATHER_FAILED, {"process_chunk-3": "forgotten"})
        log.error("Couldn't gather %d keys", 2)
    assert [r.getMessage() for r in caplog.records] == [
        "Couldn't gather keys: {'process_chunk-1': 'waiting', 'finish_tile-2': 'erred'}",
        "Couldn't gather keys: {'process_chunk-3': 'forgotten'}",
        "Couldn't gather 2 keys",
    ]
