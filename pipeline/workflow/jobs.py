"""Batch jobs of Dask workers as a workflow states them: which clusters exist, walltimes in the
batch systems' own formats, memory sizes, durations, and when a job's workers retire.

No Dask here: ``timesenclip validate`` checks a ``dask:`` section with these alone.
"""

from __future__ import annotations

import importlib.util
import re

BATCH_SYSTEMS = ("slurm", "pbs")
CLUSTERS = ("local", *BATCH_SYSTEMS)
HPC_EXTRA = 'pip install "timesenclip[hpc]"'

_ADDRESS = re.compile(r"(tcp|tls|ucx|inproc|ws|wss)://\S+")
# Slurm: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; PBS: [[HH:]MM:]SS.
_WALLTIME = re.compile(r"(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+))?(?::(\d+))?)")
# The units dask.utils.parse_bytes reads (any case); a bare number would be bytes.
_MEMORY = re.compile(r"\d+(\.\d+)?\s*([kmgtp]i?b?|b)", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The margin a job keeps between its workers' retirement and the walltime: a tenth of it, at
# most this many seconds; half of it staggers the workers so they do not all leave at once.
MAX_MARGIN = 600.0


def is_address(value: str) -> bool:
    """Whether ``value`` is a Dask scheduler address such as ``tcp://host:8786``."""
    return bool(_ADDRESS.fullmatch(value))


def cluster_kind(value: str) -> str:
    """``local``, ``slurm``, ``pbs``, or ``address`` for a scheduler's address."""
    return "address" if is_address(value) else value


def check_cluster(value: str) -> str:
    """``local``, ``slurm``, ``pbs`` or a scheduler address; ``ValueError`` otherwise."""
    if value not in CLUSTERS and not is_address(value):
        raise ValueError(
            "allowed: local, slurm, pbs, or a running scheduler's address such as tcp://host:8786"
        )
    return value


def missing_hpc_packages(batch: bool, tls_temporary: bool) -> list[str]:
    """The packages of the ``hpc`` extra that a batch cluster (``batch``) or temporary TLS
    credentials need and this Python lacks, by their names on PyPI."""
    needed = {"dask-jobqueue": "dask_jobqueue"} if batch else {}
    if tls_temporary:
        needed["cryptography"] = "cryptography"
    return [name for name, module in needed.items() if importlib.util.find_spec(module) is None]


def walltime_seconds(text: str, system: str) -> int:
    """Seconds of a walltime as ``system`` (slurm or pbs) reads it; ``ValueError`` otherwise."""
    match = _WALLTIME.fullmatch(text.strip())
    if match is None or (system == "pbs" and match.group(1) is not None):
        raise ValueError(_walltime_formats(system))
    days, hours, minutes, seconds, *plain = match.groups()
    if days is not None:  # D-HH[:MM[:SS]], Slurm only
        parts = [int(days), int(hours), int(minutes or 0), int(seconds or 0)]
        return ((parts[0] * 24 + parts[1]) * 60 + parts[2]) * 60 + parts[3]
    fields = [int(v) for v in plain if v is not None]
    if len(fields) == 1:  # a bare number: Slurm minutes, PBS seconds
        return fields[0] * 60 if system == "slurm" else fields[0]
    if len(fields) == 2:  # MM:SS in both
        return fields[0] * 60 + fields[1]
    return (fields[0] * 60 + fields[1]) * 60 + fields[2]


def _walltime_formats(system: str) -> str:
    if system == "pbs":
        return "a PBS walltime is HH:MM:SS, MM:SS or seconds, e.g. 02:00:00"
    return "a Slurm walltime is HH:MM:SS, MM:SS, D-HH[:MM[:SS]] or minutes, e.g. 02:00:00"


def check_walltime(text: str) -> str:
    """A walltime some batch system reads; which one is checked with the cluster."""
    try:
        walltime_seconds(text, "slurm")
    except ValueError:
        raise ValueError(
            "a walltime is HH:MM:SS, MM:SS, or on Slurm also D-HH[:MM[:SS]] or minutes, "
            "e.g. 02:00:00"
        ) from None
    return text


def check_memory(text: str) -> str:
    """A memory size with its unit (a bare number would be read as bytes)."""
    if not _MEMORY.fullmatch(text.strip()):
        raise ValueError("a memory size needs its unit, e.g. 32GiB, 32GB or 64000MB")
    return text


def duration_seconds(text: str) -> float:
    """Seconds of a duration with its unit: ``90s``, ``50m``, ``2h``, ``1d``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("a duration is a number with a unit: s, m, h or d, e.g. 50m")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def worker_lifetime(
    walltime: float, lifetime: float | None = None, stagger: float | None = None
) -> tuple[float, float]:
    """(lifetime, stagger) in seconds of the workers of a job with ``walltime`` s: what is not
    given keeps a margin of a tenth of the walltime (at most 10 minutes) before it, half of it
    as the stagger. ``ValueError`` when a worker could outlive its job."""
    margin = min(walltime / 10, MAX_MARGIN)
    lifetime = walltime - margin if lifetime is None else lifetime
    stagger = margin / 2 if stagger is None else stagger
    if lifetime + stagger >= walltime:
        raise ValueError(
            f"workers would live up to {format_seconds(lifetime + stagger)} (lifetime plus "
            f"stagger), not less than the walltime {format_seconds(walltime)}: the batch system "
            "would kill them mid-task. Shorten dask.lifetime or dask.lifetime_stagger, or "
            "leave them out to derive them from the walltime"
        )
    return lifetime, stagger


def format_seconds(seconds: float) -> str:
    """``1h54m``, ``27s``, ``1.5s``: a duration for messages."""
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    hours, minutes = divmod(int(seconds) // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
