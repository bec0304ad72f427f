"""Map runs on a real single-node Slurm (``fixtures.slurm``): workers submitted as jobs and their
maps equal to a local run's, TLS that keeps other clients out, a cancelled job and workers
retiring before a short walltime, each survived with the same maps."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import dask.config as dask_config
import numpy as np
import pytest
import rasterio
import yaml

from fixtures.slurm import single_node_slurm, slurm_unavailable
from pipeline.run.execute import run_workflow
from pipeline.workflow.load import load_workflow
from timesenclip.common.errors import TimeSenCLIPError

REPO = Path(__file__).resolve().parents[1]
UNAVAILABLE = slurm_unavailable()
pytestmark = [
    pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or ""),
    pytest.mark.timeout(900),
]
pytest.importorskip("dask_jobqueue", reason='dask-jobqueue: pip install "timesenclip[hpc]"')

# Two jobs of one core fit the node (2 CPUs); a worker with torch needs well under 2 GiB.
JOB = {"cores": 1, "memory": "2GiB", "interface": "lo"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with single_node_slurm(tmp_path_factory.mktemp("slurm"), cpus=2, memory_mb=4096) as slurm:
        yield slurm


def assert_same_maps(got: Path, want: Path) -> None:
    """Every GeoTIFF of the region folder ``want`` is in ``got``, equal pixel for pixel and
    placed alike."""
    names = sorted(p.name for p in want.glob("*.tif"))
    assert names and sorted(p.name for p in got.glob("*.tif")) == names
    for name in names:
        with rasterio.open(got / name) as a, rasterio.open(want / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert (a.crs, a.transform) == (b.crs, b.transform)


def wait_for(condition, timeout: float, what: str, run: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert run.poll() is None, f"the run ended before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:g} s:\n{log.read_text()}"
        time.sleep(0.2)
    return found


def test_a_slurm_run_equals_a_local_run_keeps_other_clients_out_and_survives_a_cancelled_job(
    slurm, demo_inputs, local_run, workflow_file, tmp_path
):
    """``run --cluster slurm`` with the jobs described by a jobqueue.yaml only, as a site
    provides it: its workers are Slurm jobs, its scheduler talks TLS with credentials of its
    own, a job scancel'ed mid-run is replaced, and the maps equal the local run's."""
    from distributed import Client, Security

    local_maps, _, _ = local_run
    _, workflow, _ = demo_inputs
    config = tmp_path / "dask-config"
    config.mkdir()
    jobqueue = {**JOB, "walltime": "00:10:00", "log-directory": str(tmp_path / "job-logs")}
    (config / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": jobqueue}}))
    maps = tmp_path / "maps"
    # A local cluster's size, which --cluster slurm drops; a run that loses every worker for
    # good fails within minutes rather than the hour a batch queue is given.
    dask = {"n_workers": 1, "no_worker_timeout": 180}
    outputs = {**workflow["outputs"], "dir": str(maps)}
    path = workflow_file(tmp_path, workflow, outputs=outputs, dask=dask)
    log = tmp_path / "run.log"
    env = {**slurm.env, "DASK_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(path), "--cluster", "slurm"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        found = wait_for(
            lambda: re.search(r"scheduler at tls://127\.0\.0\.1:(\d+)", log.read_text()),
            120,
            "scheduler address",
            run,
            log,
        )
        port = found.group(1)
        # Plain TCP, and TLS with credentials other than the run's, cannot even connect.
        for scheme, security in (("tcp", None), ("tls", Security.temporary())):
            with pytest.raises(OSError):
                Client(f"{scheme}://127.0.0.1:{port}", security=security, timeout=5)
        # The run's own credentials (which its workers read) reach it, and its workers there.
        (cert,) = maps.glob(".timesenclip-*.tls/cert.pem")
        key = cert.with_name("key.pem")
        own = Security(
            tls_ca_file=str(cert), tls_client_cert=str(cert), tls_client_key=str(key),
            require_encryption=True,
        )  # fmt: skip
        with Client(f"tls://127.0.0.1:{port}", security=own, timeout=30) as client:
            client.wait_for_workers(1, timeout=120)
            assert all(a.startswith("tls://") for a in client.nthreads())
        running = wait_for(lambda: slurm.jobs("RUNNING"), 120, "running job", run, log)
        wait_for(lambda: list(maps.rglob("*.npz")), 300, "chunk piece", run, log)
        slurm.command("scancel", running[0])
        assert run.wait(timeout=600) == 0, log.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log.read_text()
    assert_same_maps(maps / "synthetic", local_maps)
    assert running[0] in slurm.submitted()  # submitted with sbatch, cancelled mid-run
    assert list((tmp_path / "job-logs").glob("*.err"))  # jobqueue.yaml's log-directory
    assert re.search(r"Dask dashboard: http://127\.0\.0\.1:\d+/status", text)
    assert re.search(r"ssh -N -L (\d+):127\.0\.0\.1:\1 \S+@\S+, then open http://localhost:", text)
    assert "synthetic: 4/4 tiles, 16/16 chunks done" in text and "\r" not in text
    assert not list(maps.glob(".timesenclip-*"))  # the credentials went with the run


def test_workers_retire_before_a_short_walltime_and_new_jobs_finish_the_same_maps(
    slurm, demo_inputs, local_run, workflow_file, tmp_path, monkeypatch
):
    """A 20 s walltime (Slurm rounds it up to a minute) for one job at a time of two worker
    processes: they retire after 18 +- 1 s, before the batch system would kill them, and the
    next jobs carry the work to the end. Three copies of the demo region make the run outlast
    a lifetime on any machine."""
    local_maps, _, _ = local_run
    _, workflow, _ = demo_inputs
    for name, value in slurm.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "info")  # the workers say why they close
    logs = tmp_path / "job-logs"
    jobs = {**JOB, "cores": 2, "memory": "3GiB", "processes": 2, "walltime": "00:00:20"}
    jobs["log_directory"] = str(logs)
    dask = {"cluster": "slurm", "jobs": jobs, "min_jobs": 1, "max_jobs": 1}
    dask["no_worker_timeout"] = 180
    (region,) = workflow["regions"]
    regions = [{**region, "name": f"copy{k}"} for k in range(3)]
    outputs = {**workflow["outputs"], "dir": str(tmp_path / "maps"), "embeddings": False}
    path = workflow_file(tmp_path, workflow, regions=regions, outputs=outputs, dask=dask)
    before = set(slurm.submitted())
    # How long a lost worker may take to come back before its job counts as ended: short, as
    # nothing here restarts a worker, to keep the test short.
    with dask_config.set({"distributed.deploy.lost-worker-timeout": "3s"}):
        run_workflow(load_workflow(path), progress=False)
    for k in range(3):
        assert_same_maps(tmp_path / "maps" / f"copy{k}", local_maps)
    submitted = [job for job in slurm.submitted() if job not in before]
    assert len(submitted) > dask["max_jobs"]  # workers turned over mid-run
    reasons = "".join(log.read_text() for log in logs.glob("*.err"))
    assert "Reason: worker-lifetime-reached" in reasons  # they retired...
    assert "Time limit exhausted" not in slurm.controller_log()  # ...before the walltime


def test_a_job_the_batch_system_refuses_fails_the_run_at_once_with_its_reason(
    slurm, demo_inputs, workflow_file, tmp_path, monkeypatch
):
    from pipeline.run.cluster import dask_cluster

    _, workflow, _ = demo_inputs
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    dask = {"cluster": "slurm", "jobs": {**JOB, "memory": "64GiB"}}  # the node has 4 GiB
    path = workflow_file(tmp_path, workflow, outputs={"dir": str(tmp_path / "maps")}, dask=dask)
    before = slurm.submitted()
    with (
        pytest.raises(TimeSenCLIPError) as info,
        dask_cluster(load_workflow(path), "cpu"),
    ):
        pass
    message = str(info.value)
    assert message.startswith("sbatch refused the workers' job: sbatch: error: ")
    assert "configuration is not available" in message and "--dry-run" in message
    assert slurm.submitted() == before and not slurm.jobs("PENDING,RUNNING")
