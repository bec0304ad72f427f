"""What a benchmark ran on, for the header of its table."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def machine() -> str:
    """CPU model (with its x86 family and model numbers: CPUs of one marketing name differ by
    generation), core count and memory of this machine."""
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block ends at its blank line
            fields.setdefault(key.strip(), value.strip())
    if "model name" in fields:
        cpu = fields["model name"]
        if "cpu family" in fields:
            cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM"
