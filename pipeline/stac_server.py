"""A throw-away local STAC API: ``rustac serve`` over given collection and item dicts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from encoder.errors import TimeSenCLIPError


class StacServerError(TimeSenCLIPError):
    """rustac is missing, or its STAC API did not come up."""


@contextmanager
def serve_stac(
    collection: dict,
    items: Iterable[dict],
    workdir: Path,
    host: str = "127.0.0.1",
    *,
    startup_timeout: float = 15.0,
    port_attempts: int = 3,
) -> Iterator[str]:
    """Serve ``items`` of ``collection`` as a STAC API; yields its root URL, stops it on exit.

    Writes ``collection.json`` and ``items.ndjson`` into ``workdir`` (rustac's log goes to
    ``rustac.log`` beside them), starts ``rustac serve`` on a free port of ``host``, and returns
    once ``GET /`` answers 200.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    collection_path, items_path = workdir / "collection.json", workdir / "items.ndjson"
    collection_path.write_text(json.dumps(collection))
    items_path.write_text("".join(json.dumps(item) + "\n" for item in items))
    executable = _rustac()
    for attempt in range(1, port_attempts + 1):
        port = _free_port(host)
        url = f"http://{host}:{port}"
        command = [
            executable,
            "serve",
            str(collection_path),
            str(items_path),
            "--addr",
            f"{host}:{port}",
        ]
        log_path = workdir / "rustac.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            if _wait_until_ready(process, url, startup_timeout):
                yield url
                return
            output = log_path.read_text(errors="replace").strip()
            # Another process may have taken the port between our probe and rustac's bind.
            if (
                "address" in output.lower()
                and "in use" in output.lower()
                and attempt < port_attempts
            ):
                continue
            state = (
                f"exited with status {process.returncode}"
                if process.poll() is not None
                else f"did not answer GET {url}/ within {startup_timeout:g} s"
            )
            raise StacServerError(
                f"rustac serve {state} (command: {' '.join(command)}). Its output: "
                f"{output[-2000:] or '<none>'}. Check that the collection and items are valid STAC."
            )
        finally:
            _stop(process)


def _rustac() -> str:
    # The console script sits beside the interpreter in a venv that may not be on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    executable = shutil.which("rustac", path=search)
    if executable is None:
        raise StacServerError(
            "the rustac command was not found beside the Python interpreter or on PATH: "
            "install it with `pip install rustac` to serve a local STAC API."
        )
    return executable


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_until_ready(process: subprocess.Popen, url: str, timeout: float) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with opener.open(url + "/", timeout=1.0) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
