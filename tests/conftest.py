"""Shared test fixtures: offline hub, one torch thread, real data, synthetic STAC APIs."""

import contextlib
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from fixtures.realdata import REALDATA


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real third-party data in ../shared/realdata; skips when it is not beside the checkout."""
    if not REALDATA.is_dir():
        pytest.skip(
            f"real data folder {REALDATA} not found: "
            "check the repository out beside ../shared to run this test"
        )
    return REALDATA


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on a 2-core CPU run much faster on one thread than on two competing ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_api(tmp_path_factory):
    """Factory: write a synthetic collection (``write_synthetic_collection`` options) and serve it
    over a local STAC API; returns ``(collection, url)``. Servers stop at the end of the session."""
    from fixtures.stac_server import serve_stac
    from fixtures.synthetic import write_synthetic_collection

    with contextlib.ExitStack() as servers:

        def serve(**options):
            root = tmp_path_factory.mktemp("synthetic")
            synthetic = write_synthetic_collection(root / "data", **options)
            url = servers.enter_context(
                serve_stac(synthetic.collection, synthetic.items, root / "api")
            )
            return synthetic, url

        yield serve


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory):
    """Synthetic scenes, a tiny CLIP and a tiny encoder, served by a local STAC API."""
    from fixtures.demo import write_demo_inputs
    from fixtures.stac_server import serve_stac

    root = tmp_path_factory.mktemp("e2e")
    workflow, synthetic = write_demo_inputs(root)
    with serve_stac(synthetic.collection, synthetic.items, root / "data" / "stac") as url:
        workflow["stac"]["url"] = url
        yield root, workflow, synthetic


@pytest.fixture(scope="session")
def workflow_file():
    """``write(folder, workflow_dict, **top_level_changes) -> path`` of a workflow YAML."""
    import yaml

    def write(folder: Path, workflow: dict, **changes) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "workflow.yaml"
        path.write_text(yaml.safe_dump({**workflow, **changes}, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def local_run(demo_inputs, workflow_file, tmp_path_factory):
    """The demo workflow (embeddings off) run by ``timesenclip run --report`` on a LocalCluster,
    its output a file as in a batch job: ``(region folder, output text, report path)``."""
    import subprocess
    import sys

    _, workflow, _ = demo_inputs
    root = tmp_path_factory.mktemp("local-run")
    outputs = {**workflow["outputs"], "dir": str(root / "maps"), "embeddings": False}
    path = workflow_file(root, workflow, outputs=outputs)
    log, report = root / "run.log", root / "report.html"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(path), "--report", str(report)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert done.returncode == 0, log.read_text()
    return root / "maps" / "synthetic", log.read_text(), report
