"""Processes that leave without collecting their objects once more on the way out."""

from __future__ import annotations

import atexit
import gc


def freeze_at_exit() -> None:
    """Freeze what is alive when the interpreter exits: it goes with the process, and the
    interpreter's last collections over it take about half a second once torch is loaded."""
    atexit.unregister(gc.freeze)  # once, however often this is called
    atexit.register(gc.freeze)
