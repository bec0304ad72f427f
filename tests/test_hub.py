"""``hf-hub:`` checkpoints through the real huggingface_hub code, against a local stand-in hub:
downloads, the cache, and a hub that cannot be reached (few tries, one clear message)."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub.constants
import pytest

from encoder.checkpoint import CheckpointError, load_encoder, resolve_source, save_checkpoint
from fixtures.tiny import tiny_encoder

REPO = Path(__file__).resolve().parents[1]
SOURCE = "hf-hub:owner/repo/sub/dir/file.ckpt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(http.server.BaseHTTPRequestHandler):
    """``/owner/repo/resolve/main/<file>`` as the Hub answers it; or a hub that is down."""

    files: dict[str, bytes]
    mode: str  # "serve", "drop" (close the connection unanswered) or an HTTP status to answer
    requests: list[str]  # those for files, not huggingface_hub's other calls

    def _answer(self, body: bool) -> None:
        if "/resolve/" in self.path:
            self.requests.append(f"{self.command} {self.path}")
        if self.mode == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if self.mode != "serve":
            self.send_error(int(self.mode))
            return
        name = self.path.split("/resolve/main/", 1)[-1]
        data = self.files.get(name)
        if data is None:  # how the Hub says it: a 404 with an error code
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextmanager
def local_hub(mode: str, files: dict[str, bytes] | None = None) -> Iterator[type[_Hub]]:
    handler = type("Hub", (_Hub,), {"files": files or {}, "mode": mode, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The hub code online (the suite runs offline), with its cache in ``tmp_path``."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub also fetches a registry of AI agents once a day, and caches it in HF_HOME.
    agents = str(tmp_path / "agents.json")
    monkeypatch.setattr(huggingface_hub.constants, "AGENT_HARNESSES_PATH", agents)
    monkeypatch.delenv("TIMESENCLIP_HUB_RETRIES", raising=False)

    def use(hub: type[_Hub]) -> None:
        # What HF_ENDPOINT sets when huggingface_hub is imported.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)

    return use


@pytest.fixture
def checkpoint(tmp_path) -> bytes:
    return save_checkpoint(tiny_encoder(16), tmp_path / "file.ckpt").read_bytes()


def test_download_goes_through_the_hub_code_into_its_cache(online, checkpoint):
    with local_hub("serve", {"sub/dir/file.ckpt": checkpoint}) as hub:
        online(hub)
        path = resolve_source(SOURCE)
        assert path.read_bytes() == checkpoint
        assert COMMIT in path.parts  # the hub cache's snapshot layout
        assert load_encoder(SOURCE).config.dim == 16
    assert any(r.startswith("GET /owner/repo/resolve/main/sub/dir/file.ckpt") for r in hub.requests)


def test_unreachable_hub_is_tried_retries_plus_one_times(online, caplog):
    with local_hub("drop") as hub:
        online(hub)
        with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as raised:
            resolve_source(SOURCE, retries=1)
    # Two probes and no download: huggingface_hub's own five retries never start.
    assert len(hub.requests) == 2
    message = str(raised.value)
    assert "not reachable" in message and "not in the local cache" in message
    assert "TIMESENCLIP_HUB_RETRIES" in message
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]


def test_retries_come_from_the_environment(online, monkeypatch):
    monkeypatch.setenv("TIMESENCLIP_HUB_RETRIES", "0")
    with local_hub("503") as hub:
        online(hub)
        with pytest.raises(CheckpointError, match="HTTP 503"):
            resolve_source(SOURCE)
    assert len(hub.requests) == 1


def test_unreachable_hub_falls_back_to_the_cached_file(online, checkpoint, caplog):
    with local_hub("serve", {"sub/dir/file.ckpt": checkpoint}) as hub:
        online(hub)
        first = resolve_source(SOURCE)
    with local_hub("drop") as down:
        online(down)
        with caplog.at_level(logging.WARNING):
            again = resolve_source(SOURCE, retries=0)
    assert again == first
    assert any("not reachable" in r.getMessage() for r in caplog.records)


def test_a_missing_file_is_the_hubs_answer_not_an_outage(online):
    with local_hub("serve", {}) as hub:
        online(hub)
        with pytest.raises(CheckpointError, match="from the Hugging Face Hub") as raised:
            resolve_source(SOURCE)
    assert "not reachable" not in str(raised.value)
    assert len([r for r in hub.requests if r.startswith("HEAD")]) >= 1


def test_run_with_an_unreachable_hub_prints_one_line(tmp_path):
    """The whole command: one ``error:`` line, no retry chatter from huggingface_hub."""
    (tmp_path / "items.json").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "wf.yaml").write_text(
        "name: hub\nyear: 2023\nregions: [{name: r, bbox: [3.8, 43.55, 3.81, 43.56]}]\n"
        "stac: {file: items.json}\n"
        f"model: {{checkpoint: '{SOURCE}'}}\n"
        "tasks: [{name: lc, classes: land_cover}]\noutputs: {dir: out}\n"
    )
    with local_hub("drop") as hub:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_CACHE": str(tmp_path / "hub"),
            "TIMESENCLIP_HUB_RETRIES": "1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "wf.yaml"), "--quiet"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=300,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch hf-hub:owner/repo")
    assert len(hub.requests) == 2
