"""The installed version of the package, for checkpoints, provenance and ``--version``."""

from __future__ import annotations

from importlib import metadata


def package_version(distribution: str = "timesenclip") -> str:
    """Installed version of ``distribution``, or "unknown" when run from a bare source tree."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
