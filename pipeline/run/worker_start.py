"""What a local worker imports as it starts (Dask's ``preload``): the compositing task before it
takes any task, the chunk tasks (torch and the encoder, seconds of imports) in a thread.

A run's first tasks composite (``pipeline.run.composite_tasks``), so the worker joins the
cluster and takes them while torch loads; a task that needs torch meanwhile waits for it at its
import, as it would at any import.
"""

from __future__ import annotations

import importlib
import threading

import pipeline.run.composite_tasks  # noqa: F401  (imported now: the first tasks run it)
from timesenclip.common.quick_exit import freeze_at_exit

LATER = "pipeline.run.worker_tasks"

freeze_at_exit()  # a worker's exit is part of its cluster's close


def dask_setup(worker) -> None:
    """Start importing ``LATER`` beside the worker's first tasks."""
    threading.Thread(
        target=importlib.import_module, args=(LATER,), name="timesenclip-imports", daemon=True
    ).start()
