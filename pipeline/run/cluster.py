"""The Dask cluster a run executes on: an existing scheduler, or a local cluster sized to this
machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pipeline.workflow.schema import Workflow
from timesenclip.common.errors import TimeSenCLIPError


@contextlib.contextmanager
def dask_client(workflow: Workflow, scheduler: str | None, device: str) -> Iterator:
    """Connect to the given scheduler, or start a LocalCluster sized to this machine.

    On a GPU machine, one worker process per GPU: each holds the model once and the GPU is not
    shared by several processes' batches; the worker's threads still read cubes in parallel.
    """
    from distributed import Client, LocalCluster

    address = scheduler or workflow.dask.scheduler
    if address:
        try:
            client = Client(address)  # waits distributed.comm.timeouts.connect (30 s)
        except OSError as err:
            raise TimeSenCLIPError(
                f"cannot reach the Dask scheduler at {address} ({err}): check dask.scheduler in "
                "the workflow or --scheduler, and that the scheduler is running."
            ) from None
        with client:
            yield client
        return
    cores = os.cpu_count() or 1
    if workflow.dask.n_workers:
        n_workers = workflow.dask.n_workers
    elif device.startswith("cuda"):
        import torch

        n_workers = torch.cuda.device_count()
    else:
        n_workers = max(1, cores // 4)
    threads = workflow.dask.threads_per_worker or max(1, cores // n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
