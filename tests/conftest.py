"""Shared test fixtures: offline hub access and the real data beside the checkout."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real third-party data in ../shared/realdata, or a skip when it is not beside the checkout."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data folder {REALDATA} not found: clone the repo beside ../shared to run this test")
    return REALDATA
