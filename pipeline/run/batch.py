"""Slurm and PBS clusters (dask-jobqueue): a job's options from the workflow over the user's or
site's ``jobqueue.yaml``, workers that retire before their walltime, and adaptive scaling that
replaces every job whose workers have gone.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any

from pipeline.run.worker_environ import WORKER_MODULES, worker_environ_export
from pipeline.workflow.jobs import walltime_seconds, worker_lifetime
from pipeline.workflow.schema import DEFAULT_DASHBOARD, DaskConfig
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

CLUSTER_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
SUBMIT = {"slurm": "sbatch", "pbs": "qsub"}
# Checks (a second apart) that must all find a job unneeded before it is given back: Dask's 3
# would cancel a job that waited long in the queue at any dip in the work, losing its place.
RELEASE_AFTER = 60


def _configured(kind: str, key: str, default: Any = None) -> Any:
    """A value of the ``jobqueue.<kind>`` section of the Dask config (jobqueue.yaml)."""
    import dask.config
    import dask_jobqueue  # noqa: F401  (adds dask-jobqueue's defaults to the Dask config)

    return dask.config.get(f"jobqueue.{kind}.{key}", default)


def _worker_extra_args(kind: str) -> list[str]:
    return list(_configured(kind, "worker-extra-args") or [])


def job_cores(config: DaskConfig) -> int:
    """Cores of one job: the workflow's, else jobqueue.yaml's."""
    return int(config.jobs.cores or _configured(config.kind, "cores"))


def shared_folder(config: DaskConfig, outputs: Path) -> Path:
    """Where temporary credentials go for the workers to read: the workflow's
    ``shared_temp_directory``, else jobqueue.yaml's, else the outputs folder (which the
    workers write to, so they share it)."""
    configured = _configured(config.kind, "shared-temp-directory")
    if config.shared_temp_directory is not None:
        return config.shared_temp_directory
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    return outputs


def job_walltime(config: DaskConfig) -> float | None:
    """Seconds of the jobs' walltime: the workflow's, else jobqueue.yaml's."""
    kind = config.kind
    text = config.jobs.walltime or _configured(kind, "walltime")
    if text is None:
        return None
    try:
        return walltime_seconds(str(text), kind)
    except ValueError as err:
        raise TimeSenCLIPError(
            f"the walltime {text!r} of jobqueue.yaml (jobqueue.{kind}.walltime) does not parse: "
            f"{err}. Correct it there, or give dask.jobs.walltime in the workflow."
        ) from None


def lifetime_arguments(config: DaskConfig) -> list[str]:
    """``--lifetime`` and ``--lifetime-stagger`` of the workers, so they retire before their
    job's walltime; none when the site's worker-extra-args already set a lifetime, or no
    walltime is known."""
    if any(a.startswith("--lifetime") for a in _worker_extra_args(config.kind)):
        return []
    walltime = job_walltime(config)
    lifetime, stagger = config.lifetime_seconds()
    if walltime is None:
        if lifetime is None:
            return []
        walltime = float("inf")  # jobs without a limit: workers retire when told to
    try:
        lifetime, stagger = worker_lifetime(walltime, lifetime, stagger)
    except ValueError as err:
        raise TimeSenCLIPError(f"dask.lifetime: {err}.") from None
    return ["--lifetime", f"{round(lifetime)}s", "--lifetime-stagger", f"{round(stagger)}s"]


def cluster_options(config: DaskConfig, security, outputs: Path) -> dict:
    """The keyword arguments of dask-jobqueue's cluster class: what the workflow gives, the
    rest left to jobqueue.yaml; the dashboard on localhost unless asked otherwise."""
    kind, jobs = config.kind, config.jobs
    for key in ("cores", "memory"):
        if getattr(jobs, key) is None and _configured(kind, key) is None:
            raise TimeSenCLIPError(
                f"the {kind} jobs have no {key}: give dask.jobs.{key} in the workflow, or "
                f"jobqueue.{kind}.{key} in jobqueue.yaml (~/.config/dask/)."
            )
    given = {
        "cores": jobs.cores,
        "memory": jobs.memory,
        "processes": jobs.processes,
        "walltime": jobs.walltime,
        "queue": jobs.queue,
        "account": jobs.account,
        "job_extra_directives": jobs.directives,
        # Ours first, then the workflow's lines or else jobqueue.yaml's.
        "job_script_prologue": [
            worker_environ_export(),
            *(jobs.prologue or _configured(kind, "job-script-prologue", []) or []),
        ],
        "interface": jobs.interface,
        "local_directory": jobs.local_directory,
        "log_directory": None if jobs.log_directory is None else str(jobs.log_directory),
    }
    scheduler = dict(_configured(kind, "scheduler-options", {}) or {})
    if config.dashboard is False:
        scheduler.update(dashboard=False, dashboard_address="127.0.0.1:0")
    else:
        scheduler["dashboard_address"] = (
            config.dashboard or scheduler.get("dashboard_address") or DEFAULT_DASHBOARD
        )
    return {
        **{key: value for key, value in given.items() if value is not None},
        "worker_extra_args": [
            *_worker_extra_args(kind),
            *lifetime_arguments(config),
            *(arg for module in WORKER_MODULES for arg in ("--preload", module)),
        ],
        "scheduler_options": scheduler,
        "security": security,
        # Given, as jobqueue.yaml's pbs section lacks it (a KeyError otherwise); the run's
        # credentials are already files there (pipeline.run.cluster), so none is written.
        "shared_temp_directory": str(shared_folder(config, outputs)),
    }


def batch_cluster(config: DaskConfig, security, outputs: Path):
    """dask-jobqueue's cluster for ``config``: its scheduler runs here, no job submitted yet."""
    import dask_jobqueue

    cls = getattr(dask_jobqueue, CLUSTER_CLASSES[config.kind])
    options = cluster_options(config, security, outputs)
    try:
        return cls(**options)
    except RuntimeError as err:  # "Cluster failed to start", e.g. no such network interface
        cause = err.__cause__ or err
        raise TimeSenCLIPError(
            f"cannot start the Dask scheduler of the {config.kind} cluster here: {cause}. Check "
            "dask.jobs.interface and dask.dashboard in the workflow, and jobqueue.yaml."
        ) from None


def start_jobs(cluster, config: DaskConfig) -> None:
    """Submit the first jobs now, so that a job the batch system refuses fails the run at once
    with its reason; then request jobs adaptively between ``min_jobs`` and ``max_jobs``. A
    worker retiring at its lifetime costs its tasks no attempt (``PlannedClose``)."""
    from distributed.core import Status

    from pipeline.run.planned_close import PlannedClose

    cluster.scheduler.add_plugin(PlannedClose(cluster.scheduler))
    for _ in range(max(config.min_jobs, 1)):
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        cluster.sync(cluster._correct_state)  # the submission itself, awaited
    except (FileNotFoundError, RuntimeError) as err:
        for job in cluster.workers.values():
            if job.job_id is None:  # never submitted: the cluster must not wait for it
                job.status = Status.failed
        raise _refused(err, config.kind) from None
    cluster.adapt(
        Adaptive=_replacing_adaptive(),
        minimum_jobs=config.min_jobs,
        maximum_jobs=config.max_jobs,
        wait_count=RELEASE_AFTER,
    )


def _refused(err: Exception, kind: str) -> TimeSenCLIPError:
    """The one-paragraph error of a submission that failed."""
    if isinstance(err, FileNotFoundError):
        return TimeSenCLIPError(
            f"{SUBMIT[kind]} was not found: run timesenclip on a machine of the {kind} "
            "cluster (a login node), where jobs can be submitted."
        )
    reason = str(err).rpartition("stderr:")[2].strip() or str(err)
    return TimeSenCLIPError(
        f"{SUBMIT[kind]} refused the workers' job: {reason}. Check dask.jobs (cores, memory, "
        "walltime, queue, account, directives) against the site's limits; "
        "`timesenclip run WORKFLOW --dry-run` prints the job script."
    )


def _replacing_adaptive():
    """Dask's ``Adaptive``, replacing the jobs whose workers have all gone (retired at their
    lifetime, killed at the walltime, cancelled). The cluster forgets a lost job of one worker
    by itself but not a job of several worker processes, and Dask's ``Adaptive`` replaces
    neither while its target stays the same (dask/distributed#3154, #9102)."""
    import dask.config
    from dask.utils import parse_timedelta
    from distributed.deploy.adaptive import Adaptive

    # As long as the cluster waits for a lost single worker: a nanny may be restarting it.
    grace = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))

    class ReplacingAdaptive(Adaptive):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            # Weak: the cluster checks at its close that every job it still knows was closed.
            self.arrived = weakref.WeakSet()  # jobs at least one of whose workers connected
            self.gone_since = weakref.WeakKeyDictionary()  # job -> when its last worker left

        async def recommendations(self, target: int) -> dict:
            await self._forget_ended_jobs()
            if len(self.requested) < len(self.plan):  # planned jobs no longer there
                await self.scale_up(len(self.plan))
            return await super().recommendations(target)

        async def _forget_ended_jobs(self) -> None:
            cluster, observed, now = self.cluster, self.observed, time.monotonic()
            for name, job in list(cluster.workers.items()):
                group = cluster.worker_spec.get(name, {}).get("group")
                if not group:
                    continue
                if any(f"{name}{suffix}" in observed for suffix in group):
                    self.arrived.add(job)
                    self.gone_since.pop(job, None)
                elif job in self.arrived and now - self.gone_since.setdefault(job, now) > grace:
                    log.info("job %s of workers %s has ended: replacing it", job.job_id, name)
                    del cluster.workers[name]
                    self.arrived.discard(job)
                    await job.close()  # cancels it, should any of it still hold a node

    return ReplacingAdaptive


def job_script(config: DaskConfig, cluster) -> str:
    """What the run submits for each job, as the dry run shows it."""
    return (
        f"{config.kind} jobs: {config.min_jobs} to {config.max_jobs}, each submitted "
        f"({SUBMIT[config.kind]}) with this script:\n{cluster.job_script()}"
    )
