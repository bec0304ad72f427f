"""Retry of asset reads: transient failures are read again, permanent ones are not.

Transient: HTTP 429 and 5xx, connections reset or dropped, bodies cut short, timeouts, on a
remote href (http(s), s3, gs). A remote file GDAL does not recognise is read again too (its
header may have been cut), but is permanent when every attempt says so. Permanent: other HTTP
4xx (404: no such file), a file that is no raster or does not match its STAC metadata, and any
failure of a local file. GDAL already retries 429/5xx a few times itself
(``GDAL_HTTP_MAX_RETRY``) but not a cut body, and it keeps the blocks it fetched in its
``/vsicurl/`` cache: the file's cache is cleared before every retry here, or the retry would
read the bad bytes again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

from rasterio.errors import RasterioError

from pipeline.search.items import BadAssetError

log = logging.getLogger(__name__)
T = TypeVar("T")

REMOTE_SCHEMES = ("http", "https", "s3", "gs")
_STATUS = re.compile(r"HTTP (?:response|error) code: (\d{1,3})")
_TRANSIENT = re.compile(
    r"CURL error|Connection reset|Recv failure|timed out|timeout|Read error|"
    r"got \d+ bytes, expected \d+|Can not read TIFF directory|Failed to read directory|"
    r"IReadBlock failed|TIFFReadEncodedTile|TIFFFillTile|Failure writing output",
    re.IGNORECASE,
)
# What GDAL says of a remote file whose header came cut short, and of one that is no raster.
_UNRECOGNIZED = re.compile(r"not recognized as being in a supported file format", re.IGNORECASE)


@dataclass(frozen=True)
class ReadRetry:
    """``retries`` more attempts after a transient failure, waiting ``backoff`` s, then twice
    as long each time (at most 30 s)."""

    retries: int = 4
    backoff: float = 1.0

    def delay(self, attempt: int) -> float:
        return min(30.0, self.backoff * 2 ** (attempt - 1))


DEFAULT_RETRY = ReadRetry()


def is_remote(href: str) -> bool:
    return urlparse(href).scheme.lower() in REMOTE_SCHEMES


def error_text(error: BaseException) -> str:
    """The error and the GDAL errors under it, outermost first, each once: the HTTP status or
    GDAL's own words rather than rasterio's "see previous exception"."""
    parts: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).strip()
        if text and "See previous exception" not in text and text not in parts:
            parts.append(text)
        error = error.__cause__ or error.__context__
    return " <- ".join(parts) or "unknown error"


def is_transient(error: BaseException, href: str) -> bool:
    """Whether reading ``href`` again may succeed where it failed with ``error``."""
    if isinstance(error, BadAssetError) or not is_remote(href):
        return False
    text = error_text(error)
    status = _STATUS.search(text)
    if status and int(status.group(1)) >= 400:  # code 0: no response at all, transient
        code = int(status.group(1))
        return code in (408, 429) or code >= 500
    return bool(status or _TRANSIENT.search(text))


def is_retryable(error: BaseException, href: str) -> bool:
    """Whether to read ``href`` again within the run: a transient failure, or a remote file
    GDAL did not recognise with no HTTP error (a header cut short reads so). The latter counts
    as permanent once every attempt gave it, so a rerun does not retry a file that is no raster.
    """
    if is_transient(error, href):
        return True
    text = error_text(error)
    return is_remote(href) and not _STATUS.search(text) and bool(_UNRECOGNIZED.search(text))


def read_with_retries(read: Callable[[], T], href: str, label: str, policy: ReadRetry) -> T:
    """``read()``, again after each transient failure (logged with ``label``, ``href`` and the
    attempt) up to ``policy.retries`` times; the last failure, or a permanent one, is raised."""
    attempts = policy.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except (RasterioError, OSError) as error:
            if attempt == attempts or not is_retryable(error, href):
                raise
            wait = policy.delay(attempt)
            log.warning(
                "reading %s at %s failed (attempt %d of %d: %s); retrying in %.1f s",
                label,
                href,
                attempt,
                attempts,
                error_text(error),
                wait,
            )
            clear_cache(href)
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def vsi_path(href: str) -> str:
    """GDAL's virtual file name for a remote href (what its cache is keyed by)."""
    url = urlparse(href)
    if url.scheme in ("s3", "gs"):
        return f"/vsi{url.scheme}/{url.netloc}{url.path}"
    return f"/vsicurl/{href}"


def clear_cache(href: str) -> None:
    """Forget what GDAL's ``/vsicurl/`` cache holds of ``href`` (headers and blocks)."""
    clear = _partial_clear_cache()
    if clear is not None:
        clear(vsi_path(href))


@functools.cache
def _partial_clear_cache() -> Callable[[str], None] | None:
    """``VSICurlPartialClearCache`` from GDAL's Python bindings, else from the GDAL library that
    rasterio loaded (bundled in a wheel, or the system's)."""
    try:
        from osgeo import gdal

        return gdal.VSICurlPartialClearCache
    except ImportError:
        pass
    import rasterio

    here = os.path.dirname(rasterio.__file__)
    candidates = sorted(glob.glob(os.path.join(here, "..", "rasterio*libs", "libgdal*")))
    candidates += [name for name in [ctypes.util.find_library("gdal")] if name]
    for path in candidates:
        try:
            function = ctypes.CDLL(path).VSICurlPartialClearCache
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_char_p], None
        return lambda prefix: function(prefix.encode())
    log.warning("GDAL's VSICurlPartialClearCache was not found: retries may reread cached bytes")
    return None
