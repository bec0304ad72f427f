"""Cluster failures, raised for real by Dask, become one paragraph and exit code 3."""

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import dask
import pytest
from distributed import Client, KilledWorker, LocalCluster
from distributed.client import ClosedClientError, FutureCancelledError
from distributed.scheduler import NoWorkerError

from pipeline import cli
from pipeline.run.cluster_errors import CLUSTER_EXIT, ClusterFailureError, cluster_failure_message

RESUME = "then run the same command again"


def caught(func, *args, **kwargs) -> BaseException:
    try:
        func(*args, **kwargs)
    except BaseException as exc:
        return exc
    raise AssertionError(f"{func} raised nothing")


def die() -> None:
    os._exit(1)


@pytest.fixture(scope="module")
def client():
    """One worker process that a task may kill, and the scheduler gives up after one death."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_killed_worker(client):
    exc = caught(client.submit(die).result)
    assert isinstance(exc, KilledWorker)
    message = cluster_failure_message(exc, "alps")
    assert message.startswith("Dask workers died while mapping region 'alps'")
    assert "die-" in message and "tcp://127.0.0.1:" in message and "for want of memory" in message
    assert "cube.chunk_size" in message and RESUME in message


def test_cancelled_future(client):
    future = client.submit(time.sleep, 30, pure=False)
    client.cancel(future)
    exc = caught(future.result)
    assert isinstance(exc, FutureCancelledError)
    message = cluster_failure_message(exc, "alps")
    assert "the Dask cluster cancelled the work while mapping region 'alps' (reason: " in message
    assert RESUME in message


def test_timeouts_of_the_cluster_but_not_of_anything_else(client):
    waited = caught(client.submit(time.sleep, 5, pure=False).result, timeout=0.2)
    assert isinstance(waited, TimeoutError)
    assert "did not answer in time while mapping region 'alps'" in cluster_failure_message(
        waited, "alps"
    )
    workers = caught(client.wait_for_workers, 5, timeout=0.5)
    assert isinstance(workers, TimeoutError)
    assert "/5 workers arrived after 0.5" in cluster_failure_message(workers)
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname(), timeout=0.01) as connection,
    ):
        read = caught(connection.recv, 1)  # a read from a silent server, not the cluster
    assert isinstance(read, TimeoutError) and cluster_failure_message(read) is None
    assert cluster_failure_message(TimeoutError("read timed out")) is None
    assert cluster_failure_message(OSError(errno.ENOSPC, "No space left on device")) is None
    assert cluster_failure_message(ValueError("x")) is None


def test_no_worker_left():
    with (
        dask.config.set({"distributed.scheduler.no-workers-timeout": "0.5s"}),
        LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        exc = caught(client.submit(sum, [1, 2]).result, timeout=60)
    assert isinstance(exc, NoWorkerError)
    message = cluster_failure_message(exc)
    assert message.startswith("no Dask worker was left to run the work during the run")
    assert "waited 0.5 s" in message and RESUME in message


def test_lost_scheduler_and_closed_client(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    scheduler = subprocess.Popen(
        [*cmd, "--port", str(port), "--no-dashboard"], stderr=subprocess.DEVNULL
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1"],
        stderr=subprocess.DEVNULL,
    )
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            future = client.submit(time.sleep, 30, pure=False)
            scheduler.send_signal(signal.SIGKILL)
            exc = caught(future.result, timeout=60)
        closed = caught(client.submit, sum, [1])
    finally:
        for proc in (scheduler, worker):
            proc.kill()
            proc.wait()
    assert isinstance(exc, FutureCancelledError) and "scheduler-connection-lost" in str(exc)
    message = cluster_failure_message(exc, "alps")
    assert message.startswith("the connection to the Dask scheduler was lost while mapping")
    assert isinstance(closed, ClosedClientError)
    assert cluster_failure_message(closed).startswith("the connection to the Dask scheduler")


def test_the_cli_ends_cluster_failures_with_exit_3(client, monkeypatch, capsys):
    exc = caught(client.submit(die).result)

    def run(args):
        raise exc

    monkeypatch.setitem(cli.VERBS, "validate", run)
    assert cli.main(["validate", "x.yaml"]) == CLUSTER_EXIT == 3
    err = capsys.readouterr().err
    assert err.startswith("error: Dask workers died during the run") and "Traceback" not in err

    def fail(args):
        raise ClusterFailureError("the run loop's own message")

    monkeypatch.setitem(cli.VERBS, "validate", fail)
    assert cli.main(["validate", "x.yaml"]) == 3
    assert capsys.readouterr().err == "error: the run loop's own message\n"

    def bug(args):
        raise TimeoutError("not the cluster's")

    monkeypatch.setitem(cli.VERBS, "validate", bug)
    with pytest.raises(TimeoutError):
        cli.main(["validate", "x.yaml"])
