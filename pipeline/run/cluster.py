"""The Dask cluster a run executes on: a local cluster sized to this machine, a running scheduler,
or Slurm / PBS jobs of workers (``pipeline.run.batch``); its TLS credentials, its dashboard and
the performance report.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import getpass
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.run.worker_environ import (
    FORK_METHOD,
    PRE_SPAWN,
    WORKER_MODULES,
    worker_environ,
    worker_forkserver,
)
from pipeline.workflow.jobs import BATCH_SYSTEMS
from pipeline.workflow.schema import DEFAULT_DASHBOARD, DaskConfig, TlsFiles, Workflow
from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)
STILL_ALIVE = "Worker process still alive after"  # Dask's nanny, as it kills a slow exit


@dataclass
class RunCluster:
    """The client of a run's cluster and what the run says and waits about it."""

    client: object  # distributed.Client
    kind: str  # local, address, slurm or pbs
    dashboard: str | None  # the dashboard's link, when it has one
    max_threads: int = 0  # threads a batch cluster may grow to; 0 for one that does not grow


@contextlib.contextmanager
def dask_cluster(workflow: Workflow, device: str, report: Path | None = None) -> Iterator:
    """Start (or connect to) the workflow's cluster, log how to watch it, and yield its
    :class:`RunCluster`; with ``report``, keep Dask's performance report of all that runs."""
    with _started(workflow, device) as cluster, _reported(report):
        _announce(cluster, workflow.dask)
        yield cluster


class EarlyCluster:
    """The workflow's cluster; a local one starts in a thread as soon as this is made.

    A run plans before it needs its cluster: meanwhile the local cluster's fork server imports
    what its workers need (``worker_environ.worker_forkserver``) on the cores planning leaves
    idle, seconds a run would otherwise spend on one core. It starts early only where its size
    is known without torch (chunks on the CPU: asked for, or no CUDA driver here), and some
    region of the workflow has no ``provenance.json`` (a rerun of finished regions likely needs
    no cluster). Any other cluster starts when :meth:`cluster` asks, after the plan, so that
    input the plan refuses never submits a job or reaches a scheduler.
    """

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self._stack = contextlib.ExitStack()
        self._starting: Future | None = None
        self.started_early = (
            workflow.dask.kind == "local" and _unfinished(workflow) and _on_cpu(workflow)
        )
        if self.started_early:
            pool = ThreadPoolExecutor(1, thread_name_prefix="timesenclip-cluster")
            self._starting = pool.submit(self._start, "cpu")
            pool.shutdown(wait=False)  # its thread ends with this one task

    def __enter__(self) -> EarlyCluster:
        return self

    def __exit__(self, *exc) -> None:
        unused = self._starting is not None
        if unused:
            wait([self._starting])  # an unused cluster is closed once up
        with _killed_quietly() if unused else contextlib.nullcontext():
            self._stack.close()

    def cluster(self, device: str, report: Path | None = None) -> RunCluster:
        """The cluster, for chunks on ``device``; with ``report``, Dask's performance report of
        all that runs on it until the end of the ``with`` block is kept there."""
        cluster = None if self._starting is None else self._starting.result()
        if cluster is not None and device != "cpu":  # sized for the CPU: torch found a GPU
            self._stack.close()
            cluster = None
        self._starting = None
        cluster = cluster or self._start(device)
        _announce(cluster, self.workflow.dask)  # only now: a plan that fails says one thing
        self._stack.enter_context(_reported(report))
        return cluster

    def _start(self, device: str) -> RunCluster:
        return self._stack.enter_context(_started(self.workflow, device))


@contextlib.contextmanager
def _filtered(logger: str, keep: logging.Filter | Callable[[logging.LogRecord], bool]) -> Iterator:
    """``logger``'s records that ``keep`` refuses are left out while inside."""
    records = logging.getLogger(logger)
    records.addFilter(keep)
    try:
        yield
    finally:
        records.removeFilter(keep)


def _killed_quietly() -> contextlib.AbstractContextManager:
    """A cluster closed unused (its run's plan failed) may find its workers still importing
    torch beside nothing (``worker_start``), longer than Dask's nanny waits for them to exit on
    a slow machine: their kill, with nothing of the run's to lose, is no warning to print."""
    return _filtered(
        "distributed.nanny", lambda record: not record.getMessage().startswith(STILL_ALIVE)
    )


def _unfinished(workflow: Workflow) -> bool:
    """Whether a region of ``workflow`` lacks the provenance.json a finished one has."""
    from pipeline.maps.outputs import PROVENANCE

    return any(not (workflow.region_folder(r) / PROVENANCE).exists() for r in workflow.regions)


def _on_cpu(workflow: Workflow) -> bool:
    """Whether chunks run on the CPU, known without torch: asked for, or ``auto`` on a machine
    without the CUDA driver, which torch would need to find a GPU."""
    device = workflow.model.device
    return device == "cpu" or (device == "auto" and ctypes.util.find_library("cuda") is None)


@contextlib.contextmanager
def _started(workflow: Workflow, device: str) -> Iterator[RunCluster]:
    """The workflow's cluster, its client open, closed at the end."""
    config = workflow.dask
    with contextlib.ExitStack() as stack:
        if config.kind == "local":  # first: its imports run while the scheduler starts
            stack.enter_context(worker_forkserver())
        security = _security(config, workflow.outputs.dir, stack)
        if config.kind == "address":
            cluster = _connect(config, security)
        elif config.kind == "local":
            cluster = _local(config, security, device, stack)
        else:
            cluster = _batch(config, security, workflow.outputs.dir, stack)
        # Closed, not exited: a client entered in the starting thread cannot be exited in another.
        stack.callback(cluster.client.close)
        yield cluster


def _reported(report: Path | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if report is None else _kept_report(report)


def _connect(config: DaskConfig, security) -> RunCluster:
    from distributed import Client

    try:
        client = Client(config.cluster, security=security)  # waits comm.timeouts.connect (30 s)
    except OSError as err:
        raise TimeSenCLIPError(
            f"cannot reach the Dask scheduler at {config.cluster} ({err}): check dask.cluster in "
            "the workflow or --cluster, and that the scheduler is running."
        ) from None
    info = client.scheduler_info(n_workers=0)
    port = info.get("services", {}).get("dashboard")
    host = urlparse(client.scheduler.address).hostname
    return RunCluster(client, "address", f"http://{host}:{port}/status" if port else None)


def _local(config: DaskConfig, security, device: str, stack) -> RunCluster:
    """A LocalCluster sized to this machine: on a GPU machine, one worker process per GPU
    (each holds the model once and the GPU is not shared by several processes' batches; the
    worker's threads still read cubes in parallel)."""
    import dask
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    if config.n_workers:
        n_workers = config.n_workers
    elif device.startswith("cuda"):
        import torch

        n_workers = torch.cuda.device_count()
    else:
        n_workers = max(1, cores // 4)
    threads = config.threads_per_worker or max(1, cores // n_workers)
    dashboard = None if config.dashboard is False else config.dashboard or DEFAULT_DASHBOARD
    # Read as each nanny is made and starts its worker; a worker the nanny restarts later is
    # spawned, as Dask's default.
    with dask.config.set({PRE_SPAWN: worker_environ(), FORK_METHOD: "forkserver"}):
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads,
                processes=True,
                preload=list(WORKER_MODULES),
                dashboard_address=dashboard,
                security=security,
                protocol="tls://" if security else None,
            )
        )
    client = Client(cluster, security=security)
    return RunCluster(client, "local", _dashboard_link(cluster, dashboard))


def _batch(config: DaskConfig, security, outputs: Path, stack) -> RunCluster:
    from distributed import Client

    from pipeline.run.batch import batch_cluster, job_cores, start_jobs
    from pipeline.run.planned_close import ResultComputedAgain

    cluster = stack.enter_context(batch_cluster(config, security, outputs))
    start_jobs(cluster, config)
    # Workers retire all along (planned_close): what that costs is no error of the run's.
    stack.enter_context(_filtered("distributed.scheduler", ResultComputedAgain()))
    client = Client(cluster, security=security)
    options = cluster.scheduler_spec["options"]
    address = None if options.get("dashboard") is False else options.get("dashboard_address")
    dashboard = _dashboard_link(cluster, address)
    return RunCluster(client, config.kind, dashboard, job_cores(config) * config.max_jobs)


def _dashboard_link(cluster, address: str | None) -> str | None:
    """The dashboard's link: its own host when it listens on one (127.0.0.1 by default), else
    this machine's name."""
    port = cluster.scheduler_info.get("services", {}).get("dashboard")
    if address is None or not port:
        return None
    host = address.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = _this_host()
    return f"http://{host}:{port}/status"


def _this_host() -> str:
    """This machine's name as others reach it: its full name, else its host name (a machine
    whose full name resolves to localhost)."""
    name = socket.getfqdn()
    return name if "." in name else socket.gethostname()


def _announce(cluster: RunCluster, config: DaskConfig) -> None:
    """Log the scheduler and the dashboard; on a batch system, how to reach the dashboard."""
    address = cluster.client.scheduler.address
    log.info("Dask cluster %s: scheduler at %s", config.cluster, address)
    if cluster.dashboard is None:
        return
    log.info("Dask dashboard: %s", cluster.dashboard)
    if cluster.kind in BATCH_SYSTEMS:
        link = urlparse(cluster.dashboard)
        log.info(
            "to watch it from your own machine: ssh -N -L %d:%s:%d %s@%s, then open "
            "http://localhost:%d/status",
            link.port,
            link.hostname,
            link.port,
            getpass.getuser(),
            _this_host(),
            link.port,
        )


def _security(config: DaskConfig, outputs: Path, stack: contextlib.ExitStack):
    """The run's TLS: the workflow's certificate files, temporary credentials made for the run,
    or None (plain TCP). Temporary credentials reach a batch system's workers as files in a
    private folder on storage they share, removed when the run ends."""
    mode = config.tls_mode
    if mode is None:
        return None
    if isinstance(mode, TlsFiles):
        return _tls_files(mode.ca_file, mode.cert, mode.key)
    from distributed import Security

    temporary = Security.temporary()
    if config.kind not in BATCH_SYSTEMS:
        return temporary  # this machine's processes get it in memory
    from pipeline.run.batch import shared_folder

    shared = shared_folder(config, outputs)
    shared.mkdir(parents=True, exist_ok=True)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(".tls", ".timesenclip-", shared)))
    files = {}
    for name, pem in (("cert.pem", temporary.tls_ca_file), ("key.pem", temporary.tls_client_key)):
        files[name] = folder / name
        with os.fdopen(os.open(files[name], os.O_WRONLY | os.O_CREAT, 0o600), "w") as out:
            out.write(pem)  # readable by this user only, like the folder
    return _tls_files(files["cert.pem"], files["cert.pem"], files["key.pem"])


def _tls_files(ca_file: Path, cert: Path, key: Path):
    """TLS for every role (this run, scheduler, workers) from PEM files, encryption required."""
    from distributed import Security

    roles = {
        f"tls_{role}_{part}": str(path)
        for role in ("client", "scheduler", "worker")
        for part, path in (("cert", cert), ("key", key))
    }
    return Security(tls_ca_file=str(ca_file), require_encryption=True, **roles)


@contextlib.contextmanager
def _kept_report(path: Path) -> Iterator[None]:
    """Dask's performance report of the block, written to ``path`` when the block succeeds; a
    report that cannot be made (say, a scheduler without bokeh) costs a warning, not the run."""
    from distributed import performance_report

    report = performance_report(filename=str(path))
    report.__enter__()
    yield
    try:
        with atomic_path(path) as tmp:
            report.filename = str(tmp)
            report.__exit__(None, None, None)
    except Exception as err:  # the maps are done: a diagnostic must not fail the run
        log.warning("could not write the Dask performance report %s: %s", path, err)
    else:
        log.info("Dask performance report: %s", path)


def describe_cluster(workflow: Workflow) -> str:
    """The cluster a run would use, for the dry run; for Slurm and PBS, the job script that
    would be submitted (its scheduler is started to write it, and no job is submitted)."""
    config = workflow.dask
    if config.kind not in BATCH_SYSTEMS:
        return f"Dask cluster: {config.cluster}"
    from pipeline.run.batch import batch_cluster, job_script

    with contextlib.ExitStack() as stack:
        security = _security(config, workflow.outputs.dir, stack)
        cluster = stack.enter_context(batch_cluster(config, security, workflow.outputs.dir))
        return job_script(config, cluster)
