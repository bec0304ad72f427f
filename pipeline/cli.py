"""The ``timesenclip`` command line: one verb per job, ``--help`` on each.

The verbs live in ``pipeline.commands`` (each verb's arguments next to its handler); this module
builds the parser from them, runs one, and turns user errors into one paragraph each.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pipeline.commands import assess, maps, stores, training
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.quick_exit import freeze_at_exit
from timesenclip.common.version import package_version

COMMANDS = (*maps.COMMANDS, *stores.COMMANDS, *assess.COMMANDS, *training.COMMANDS)
VERBS: dict[str, Callable[[argparse.Namespace], int]] = {c.name: c.handler for c in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timesenclip",
        description="Zero-shot land-cover, land-use, crop-type and habitat maps from Sentinel-2 "
        "time series with TimeSenCLIP.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs (each has --help)")
    for command in COMMANDS:
        command.add_to(verbs)
    return parser


# What to do about the file-system errors a user can fix; any other OSError is a bug to report.
_OS_ADVICE = {
    errno.EROFS: "choose a folder on a writable disk (for `run`: outputs.dir in the workflow)",
    errno.ENOSPC: "free space on that disk, or choose a folder on another one",
    errno.EDQUOT: "free space within your quota, or choose a folder on another disk",
    errno.EACCES: "make it and its folder writable for you (ls -ld shows who may write), or "
    "choose another folder",
    errno.EPERM: "make it and its folder writable for you, or choose another folder",
    errno.ENOENT: "check the path: create the missing folder or correct the name",
    errno.ENOTDIR: "check the path: a part of it is a file where a folder is needed",
}


def os_error_message(err: OSError) -> str | None:
    """One paragraph for a disk or permission error (what, where, what to do); None for others."""
    advice = _OS_ADVICE.get(err.errno)
    if advice is None:
        return None
    where = f" {err.filename}" if err.filename is not None else ""
    if err.filename2 is not None:
        where += f" -> {err.filename2}"
    return (
        f"{err.strerror or os.strerror(err.errno)}:{where}. To fix it, {advice}; then run the same "
        "command again: finished work is kept, and no file was left half-written."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    freeze_at_exit()
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        # Dask logs every worker start and stop at INFO, here and in the worker processes it
        # spawns (which read the environment); keep that for -vv.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # pipeline.search.stac logs each retry once; urllib3 would log it a second time.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # huggingface_hub prints through a handler of its own: passed on to ours too, every line of
    # it would appear twice.
    logging.getLogger("huggingface_hub").propagate = False
    try:
        return VERBS[args.verb](args)
    except TimeSenCLIPError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except BaseException as err:  # disk and cluster failures get a message; the rest are bugs
        from pipeline.run.cluster_errors import CLUSTER_EXIT, cluster_failure_message

        if isinstance(err, OSError) and (message := os_error_message(err)):
            print(f"error: {message}", file=sys.stderr)
            return 2
        if message := cluster_failure_message(err):
            print(f"error: {message}", file=sys.stderr)
            return CLUSTER_EXIT
        raise


if __name__ == "__main__":
    sys.exit(main())
