"""The cluster of a run, without a batch system: walltimes and worker lifetimes, Slurm and PBS job
scripts from the workflow over jobqueue.yaml, TLS, the --cluster override, what validate says,
the dashboard, the performance report and progress off a terminal."""

from __future__ import annotations

import ast
import importlib.util
import io
import logging
import os
import re
import resource
import shlex
import subprocess
import sys
import time
import types
from multiprocessing import forkserver
from pathlib import Path

import dask
import distributed
import psutil
import pytest
import yaml

from pipeline.cli import main
from pipeline.run import cluster as cluster_module
from pipeline.run import worker_start
from pipeline.run.cluster import EarlyCluster, dask_cluster, describe_cluster
from pipeline.run.cluster_errors import ClusterFailureError
from pipeline.run.progress import ProgressWatch, RegionProgress
from pipeline.run.worker_environ import LATER, WORKER_MODULES
from pipeline.workflow import jobs
from pipeline.workflow.jobs import walltime_seconds, worker_lifetime
from pipeline.workflow.load import WorkflowError, parse_workflow, with_cluster
from timesenclip.common.errors import TimeSenCLIPError

# Slurm and PBS workflows, and their clusters, need the hpc extra.
HPC = pytest.mark.skipif(
    importlib.util.find_spec("dask_jobqueue") is None,
    reason='needs dask-jobqueue: pip install "timesenclip[hpc]"',
)
REPO = Path(__file__).resolve().parents[1]
MONTPELLIER = REPO / "workflows" / "montpellier-2023.yaml"


def workflow_with(folder: Path, dask_section: dict):
    """The README's example workflow with ``dask_section``, its maps in ``folder``."""
    data = yaml.safe_load(MONTPELLIER.read_text())
    data["outputs"]["dir"] = str(folder / "maps")
    return parse_workflow({**data, "dask": dask_section}, base_dir=folder)


WALLTIMES = {  # seconds as Slurm and as PBS read them; None: refused
    "90": (5400, 90),  # Slurm: minutes, PBS: seconds
    "30:00": (1800, 1800),
    "02:00:00": (7200, 7200),
    "1-02": (93600, None),
    "1-02:30": (95400, None),
    "2-00:00:30": (172830, None),
    "2h": (None, None),
    "": (None, None),
}


@pytest.mark.parametrize("text", WALLTIMES)
def test_walltimes_read_as_each_batch_system_reads_them(text):
    for system, seconds in zip(("slurm", "pbs"), WALLTIMES[text], strict=True):
        if seconds is None:
            with pytest.raises(ValueError, match="walltime is HH:MM:SS"):
                walltime_seconds(text, system)
        else:
            assert walltime_seconds(text, system) == seconds


def test_worker_lifetime_keeps_a_tenth_of_the_walltime_at_most_ten_minutes():
    assert worker_lifetime(3600) == (3240, 180)  # retire between 51 and 57 minutes
    assert worker_lifetime(30) == (27, 1.5)
    assert worker_lifetime(12 * 3600) == (12 * 3600 - 600, 300)
    assert worker_lifetime(3600, lifetime=3000) == (3000, 180)
    assert worker_lifetime(3600, stagger=60) == (3240, 60)
    with pytest.raises(ValueError, match=r"up to 1h01m .* walltime 1h00m"):
        worker_lifetime(3600, lifetime=3600 - 120, stagger=180)


SITE = {  # a site's jobqueue.yaml
    "queue": "site-queue",
    "account": "site-account",
    "cores": 8,
    "memory": "64GiB",
    "job-script-prologue": ["module load site-python"],
}
JOBS = {  # what the workflow gives
    "cores": 4,
    "memory": "8GiB",
    "processes": 2,
    "walltime": "02:00:00",
    "queue": "normal",
    "prologue": ["source ~/venvs/timesenclip/bin/activate"],
    "interface": "lo",
    "local_directory": "$TMPDIR",
}


@HPC
@pytest.mark.parametrize(
    ("system", "directives", "header"),
    [
        (
            "slurm",
            ["--constraint=cpu"],
            [
                "#SBATCH -p normal",
                "#SBATCH -A site-account",
                "#SBATCH --cpus-per-task=4",
                "#SBATCH --mem=8G",
                "#SBATCH -t 02:00:00",
                "#SBATCH --constraint=cpu",
            ],
        ),
        (
            "pbs",
            ["-l place=scatter"],
            [
                "#PBS -q normal",
                "#PBS -A site-account",
                "#PBS -l select=1:ncpus=4:mem=8192MB",
                "#PBS -l walltime=02:00:00",
                "#PBS -l place=scatter",
            ],
        ),
    ],
)
def test_job_scripts_take_the_workflow_over_jobqueue_yaml(system, directives, header, tmp_path):
    pytest.importorskip("dask_jobqueue")  # its defaults first: the site's go over them
    workflow = workflow_with(
        tmp_path, {"cluster": system, "jobs": {**JOBS, "directives": directives}, "max_jobs": 6}
    )
    with dask.config.set({f"jobqueue.{system}.{key}": value for key, value in SITE.items()}):
        text = describe_cluster(workflow)
    assert text.startswith(f"{system} jobs: 1 to 6, each submitted")
    script = text.splitlines()
    for line in header:
        assert line in script, f"{line!r} not in:\n{text}"
    assert "source ~/venvs/timesenclip/bin/activate" in script  # the workflow's, not the site's
    assert "module load site-python" not in text
    (command,) = [line for line in script if "distributed.cli.dask_worker" in line]
    (export,) = [line for line in script if "PRE_SPAWN_ENVIRON" in line]
    assert script.index(export) < script.index(command)
    environ = ast.literal_eval(shlex.split(export.partition("=")[2])[0])
    assert environ["MALLOC_MMAP_THRESHOLD_"] == 32 * 2**20  # set before each worker starts
    assert environ["MALLOC_TRIM_THRESHOLD_"] == 64 * 2**20
    assert environ["MALLOC_ARENA_MAX"] == 2
    assert environ["OMP_NUM_THREADS"] == 1  # Dask's own pre-spawn settings kept
    for part in [
        "--nworkers 2 ",
        "--nthreads 2 ",
        "--memory-limit 4.00GiB ",
        "--local-directory $TMPDIR ",
        "--lifetime 6600s --lifetime-stagger 300s ",  # 2 h less 10 minutes, +- 5
        "--preload pipeline.run.worker_start",  # torch loads beside the first blocks
        "--interface lo ",
        "--protocol tls:// ",
    ]:
        assert part in command, f"{part!r} not in {command}"
    assert re.search(r"dask_worker tls://127\.0\.0\.1:\d+ ", command)
    files = re.findall(r"--tls-(?:ca-file|cert|key) (\S+)", command)
    assert len(files) == 3 and all(".timesenclip-" in f for f in files)
    assert not list((tmp_path / "maps").glob(".timesenclip-*"))  # removed with the cluster


@HPC
def test_tls_can_be_turned_off_or_use_ones_own_certificates(tmp_path):
    from distributed import Security

    plain = workflow_with(tmp_path, {"cluster": "slurm", "jobs": JOBS, "tls": False})
    text = describe_cluster(plain)
    assert "--tls-" not in text and re.search(r"dask_worker tcp://127\.0\.0\.1:\d+ ", text)
    temporary = Security.temporary()
    (tmp_path / "site.pem").write_text(temporary.tls_ca_file)
    (tmp_path / "me.key").write_text(temporary.tls_client_key)
    tls = {"ca_file": "site.pem", "cert": "site.pem", "key": "me.key"}  # beside the workflow
    own = workflow_with(tmp_path, {"cluster": "pbs", "jobs": JOBS, "tls": tls})
    text = describe_cluster(own)
    assert f"--tls-ca-file {tmp_path / 'site.pem'} " in text
    assert f"--tls-key {tmp_path / 'me.key'}" in text


@HPC
def test_the_dashboard_listens_on_localhost_unless_asked(tmp_path):
    default = workflow_with(tmp_path, {"cluster": "slurm", "jobs": JOBS})
    open_to_all = workflow_with(tmp_path, {"cluster": "slurm", "jobs": JOBS, "dashboard": ":0"})
    from pipeline.run.batch import cluster_options

    assert cluster_options(default.dask, None, tmp_path)["scheduler_options"] == {
        "dashboard_address": "127.0.0.1:8787"
    }
    assert cluster_options(open_to_all.dask, None, tmp_path)["scheduler_options"] == {
        "dashboard_address": ":0"
    }


@HPC
def test_jobs_without_cores_or_memory_anywhere_are_a_clear_error(tmp_path):
    workflow = workflow_with(tmp_path, {"cluster": "pbs", "jobs": {"cores": 2}})
    with pytest.raises(TimeSenCLIPError, match=r"no memory: give dask\.jobs\.memory .* jobqueue"):
        describe_cluster(workflow)


@HPC
def test_a_missing_submit_command_is_a_clear_error(tmp_path, monkeypatch):
    workflow = workflow_with(tmp_path, {"cluster": "slurm", "jobs": JOBS, "tls": False})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with (
        pytest.raises(TimeSenCLIPError, match="sbatch was not found: run timesenclip on a"),
        dask_cluster(workflow, "cpu"),
    ):
        pass


@HPC
def test_the_cluster_override_drops_the_other_clusters_keys(tmp_path):
    slurm = workflow_with(tmp_path, {"cluster": "slurm", "jobs": JOBS, "max_jobs": 3})
    local = with_cluster(slurm, "local")
    assert (local.dask.kind, local.dask.max_jobs, local.dask.jobs.cores) == ("local", 4, None)
    sized = workflow_with(tmp_path, {"n_workers": 2, "dashboard": "127.0.0.1:9000"})
    address = with_cluster(sized, "tls://10.0.0.1:8786")
    assert (address.dask.kind, address.dask.n_workers, address.dask.dashboard) == (
        "address",
        None,
        None,
    )
    assert with_cluster(sized, "pbs").dask.tls_mode == "temporary"
    with pytest.raises(WorkflowError) as info:
        with_cluster(sized, "sge")
    assert "--cluster sge with the dask section of a workflow has 1 problem(s)" in str(info.value)
    assert "cluster: got 'sge'; allowed: local, slurm, pbs" in str(info.value)


def test_workers_of_a_remote_cluster_resolve_the_device_themselves(tmp_path):
    """A login node without a GPU submits jobs to GPU nodes: a remote cluster's chunks get the
    workflow's device as it is (each worker resolves it); a local cluster's is resolved, and
    fails, on this machine."""
    import torch

    from pipeline.plan.settings import chunk_device

    data = yaml.safe_load(MONTPELLIER.read_text())
    data["outputs"]["dir"] = str(tmp_path / "maps")
    for device in ("cuda", "cuda:1", "auto"):
        remote = {**data, "model": {**data["model"], "device": device}}
        for cluster in ("tcp://10.0.0.1:8786", "slurm", "pbs"):
            workflow = parse_workflow({**remote, "dask": {"cluster": cluster}}, base_dir=tmp_path)
            assert chunk_device(workflow) == device
    local = parse_workflow(
        {**data, "model": {**data["model"], "device": "auto"}}, base_dir=tmp_path
    )
    assert chunk_device(local) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        cuda = parse_workflow(
            {**data, "model": {**data["model"], "device": "cuda"}}, base_dir=tmp_path
        )
        with pytest.raises(TimeSenCLIPError, match="no CUDA device"):
            chunk_device(cuda)


def test_validate_names_the_extra_to_install_without_dask_jobqueue(tmp_path, capsys, monkeypatch):
    data = yaml.safe_dump({"dask": {"cluster": "slurm", "jobs": {"walltime": "01:00:00"}}})
    path = tmp_path / "w.yaml"
    path.write_text(MONTPELLIER.read_text().rsplit("dask:", 1)[0] + data)
    real = jobs.importlib.util.find_spec
    monkeypatch.setattr(
        jobs.importlib.util,
        "find_spec",
        lambda name: None if name == "dask_jobqueue" else real(name),
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("  - ")]
    assert line.startswith("  - dask (line 22): got cluster 'slurm' with temporary TLS")
    assert line.endswith(
        'that needs dask-jobqueue, not installed here: pip install "timesenclip[hpc]"'
    )


def test_progress_is_plain_lines_off_a_terminal_and_bars_on_one():
    log = io.StringIO()  # not a terminal: a batch job's log
    with RegionProgress("camargue", 2, 3, stream=log, interval=0) as progress:
        for kind in ("chunks", "chunks", "tiles", "chunks", "tiles"):
            progress.update(kind)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("camargue: 0/2 tiles, 0/3 chunks done (")
    assert lines[3].startswith("camargue: 1/2 tiles, 2/3 chunks done (")
    assert lines[-1] == lines[-2] and lines[-1].startswith("camargue: 2/2 tiles, 3/3 chunks done")
    assert len(lines) == 7 and "\r" not in log.getvalue()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with RegionProgress("camargue", 2, 3, stream=screen) as progress:
        progress.update("tiles")
    assert "\r" in screen.getvalue() and "camargue tiles:  50%" in screen.getvalue()
    quiet = io.StringIO()
    with RegionProgress("camargue", 2, 3, stream=quiet, enabled=False) as progress:
        progress.update("tiles")
    assert quiet.getvalue() == ""


class Workers:
    """A client whose cluster has the given threads, for the watch."""

    def __init__(self, nthreads: dict) -> None:
        self.threads = nthreads

    def nthreads(self) -> dict:
        return self.threads


def test_a_stalled_run_points_to_its_dashboard():
    watch = ProgressWatch(Workers({"w": 2}), 0.0, 60, "http://127.0.0.1:8787/status")
    with pytest.raises(ClusterFailureError, match=r"Check the Dask dashboard \(http://127"):
        watch.check("camargue")


def test_no_worker_on_a_batch_system_says_where_its_jobs_may_be():
    watch = ProgressWatch(Workers({}), 3600, 0.0, batch=True)
    watch.check("camargue")  # starts the count
    watch.checked = 0.0
    with pytest.raises(ClusterFailureError, match=r"jobs may still wait in the queue \(squeue"):
        watch.check("camargue")


def test_local_workers_start_with_glibcs_own_malloc_thresholds(tmp_path):
    """Dask's nanny fixes MALLOC_TRIM_THRESHOLD_ at 64 KiB: a local run's workers get glibc's
    own thresholds instead, two malloc arenas, and Dask's other pre-spawn settings."""
    workflow = workflow_with(tmp_path, {"cluster": "local", "n_workers": 1, "dashboard": False})
    names = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_ARENA_MAX",
        "OMP_NUM_THREADS",
    ]
    with dask_cluster(workflow, "cpu") as cluster:
        found = cluster.client.run(lambda: [os.environ.get(name) for name in names])
    assert list(found.values()) == [[str(32 * 2**20), str(64 * 2**20), "2", "1"]]


def _burn(seconds: float) -> float:
    """Spend about ``seconds`` of CPU time in this process; return what it spent."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(range(10_000))
    return time.process_time() - start


def test_local_workers_are_forked_with_their_imports_done_and_their_cpu_counted(tmp_path):
    """A local cluster's workers start forked from a fork server that imported every module a
    worker imports, torch too; with the cluster closed the server is gone, reaped, and the
    workers' CPU time counts in this process's children's, as a spawned worker's would."""
    workflow = workflow_with(tmp_path, {"cluster": "local", "n_workers": 1, "dashboard": False})
    modules = [*WORKER_MODULES, *LATER, "torch"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with dask_cluster(workflow, "cpu") as cluster:
        server = forkserver._forkserver._forkserver_pid
        found = cluster.client.run(lambda: (os.getppid(), [m in sys.modules for m in modules]))
        ((spent,),) = [cluster.client.run(_burn, 1.0).values()]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ((parent, loaded),) = found.values()
    assert parent == server != os.getpid()
    assert loaded == [True] * len(modules)
    assert forkserver._forkserver._forkserver_pid is None
    assert not psutil.pid_exists(server)  # reaped: no zombie left either
    children = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert children >= spent >= 1.0


def test_a_local_cluster_starts_while_the_run_plans(tmp_path):
    """Made before the plan, a local run's cluster starts in the background, its workers with
    the compositing task imported as they start and the chunk tasks (torch) soon after; the run
    then takes that cluster, closed with the block."""
    workflow = workflow_with(tmp_path, {"cluster": "local", "n_workers": 1, "dashboard": False})
    with EarlyCluster(workflow) as early:
        assert early.started_early
        for _ in range(240):  # up in the background, before the run asks for it
            seen = distributed.client._get_global_client()
            if seen is not None and seen.status == "running":
                break
            time.sleep(0.25)
        cluster = early.cluster("cpu")
        assert seen is cluster.client
        started = [*WORKER_MODULES, "pipeline.run.composite_tasks"]
        loaded = cluster.client.run(lambda: [name in sys.modules for name in started])
        assert list(loaded.values()) == [[True] * len(started)]
        for _ in range(240):  # imported in a thread of the worker's
            later = cluster.client.run(lambda: set(worker_start.LATER) <= set(sys.modules))
            if all(later.values()):
                break
            time.sleep(0.25)
        assert list(later.values()) == [True]
        assert cluster.client.status == "running"
    assert cluster.client.status == "closed"


@pytest.mark.parametrize(
    ("status", "message", "kept"),
    [
        ("closing", worker_start.HEARTBEAT_FAILED + ".", False),
        ("running", worker_start.HEARTBEAT_FAILED + ".", True),
        ("closing", "Compute Failed", True),
    ],
)
def test_a_heartbeat_cut_off_by_the_workers_close_is_not_an_error(status, message, kept):
    """The error Dask logs when a closing worker's heartbeat meets the closed connection (a run
    whose plan fails closes its fresh cluster at once) stays out of the terminal; the same
    failure of a running worker, and any other error of a closing one, are kept."""
    worker = types.SimpleNamespace(status=distributed.core.Status[status])
    record = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, (), None)
    assert worker_start.HeartbeatAtClose(worker).filter(record) is kept


def test_the_compositing_task_imports_no_torch():
    """What a worker needs for its first tasks (blocks of months) loads without torch, whose
    seconds of imports a fresh worker spends beside them (``pipeline.run.worker_start``)."""
    code = "import sys, pipeline.run.composite_tasks; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("device", "driver", "finished"),
    [("cuda", None, False), ("auto", "libcuda.so.1", False), ("cpu", None, True)],
    ids=["cuda asked", "a CUDA driver here", "regions finished"],
)
def test_no_cluster_starts_before_the_plan_knows_it_is_needed(
    tmp_path, monkeypatch, device, driver, finished
):
    """Sized by a device only torch can tell (a GPU asked for, or a CUDA driver on the machine),
    or likely not needed (every region has its provenance.json), the cluster waits for the
    plan."""
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: driver)
    workflow = workflow_with(tmp_path, {"cluster": "local", "dashboard": False})
    workflow = workflow.model_copy(
        update={"model": workflow.model.model_copy(update={"device": device})}
    )
    for region in workflow.regions if finished else ():
        (workflow.outputs.dir / region.name).mkdir(parents=True)
        (workflow.outputs.dir / region.name / "provenance.json").write_text("{}")
    with EarlyCluster(workflow) as early:
        assert not early.started_early


def test_a_local_run_logs_its_dashboard_and_keeps_its_performance_report(local_run):
    _, log, report = local_run
    assert re.search(r"Dask cluster local: scheduler at tcp://127\.0\.0\.1:\d+", log)
    assert re.search(r"Dask dashboard: http://127\.0\.0\.1:\d+/status", log)
    assert "ssh -N" not in log  # the tunnel is for batch systems
    assert "synthetic: 4/4 tiles, 16/16 chunks done" in log and "\r" not in log
    html = report.read_text()
    assert "Dask Performance Report" in html
    assert "process_chunk" in html and "finish_tile" in html and "mosaic_to_cog" in html
    assert not list(report.parent.glob(f".{report.name}.tmp-*"))


@HPC
def test_a_dry_run_prints_the_job_script(demo_inputs, workflow_file, tmp_path):
    """In a fresh ``timesenclip``, the site's jobqueue.yaml over dask-jobqueue's defaults."""
    _, workflow, _ = demo_inputs
    path = workflow_file(tmp_path, workflow, outputs={"dir": str(tmp_path / "maps")})
    config = tmp_path / "dask-config"
    config.mkdir()
    site = {"jobqueue": {"pbs": {"cores": 2, "memory": "4GB", "queue": "short"}}}
    (config / "jobqueue.yaml").write_text(yaml.safe_dump(site))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(path), "--dry-run", "--cluster", "pbs"],
        env={**os.environ, "DASK_CONFIG": str(config), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "region synthetic: 4 tile(s)" in out  # the plan
    assert "pbs jobs: 1 to 4, each submitted (qsub) with this script:" in out
    assert "#PBS -q short" in out and "#PBS -l select=1:ncpus=2:mem=3815MB" in out
    assert "#PBS -l walltime=00:30:00" in out  # dask-jobqueue's default
    assert "--lifetime 1620s --lifetime-stagger 90s" in out  # derived from it
    assert not (tmp_path / "maps" / "synthetic").exists()


def test_a_cluster_closed_unused_kills_a_slow_worker_without_a_warning(caplog):
    """While an unused cluster closes, the nanny's kill of a worker slow to exit is left out of
    the log; its other warnings, and that one once the close is over, are kept."""
    nanny = logging.getLogger("distributed.nanny")
    killed = "Worker process still alive after 4.0 seconds, killing"
    with caplog.at_level(logging.WARNING, logger=nanny.name):
        with cluster_module._killed_quietly():
            nanny.warning(killed)
            nanny.warning("Restarting worker")
        nanny.warning(killed)
    assert [r.getMessage() for r in caplog.records] == ["Restarting worker", killed]
