"""Verbs of the mapping half: run a workflow, check it, list class sets, the offline demo."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from pipeline.commands.command import command
from pipeline.commands.options import add_quiet


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", type=Path, help="workflow YAML file")
    p.add_argument(
        "--cluster",
        help="the Dask cluster, over the workflow's dask.cluster: local, slurm, pbs, or a "
        "running scheduler's address such as tcp://host:8786",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list tiles, items and pixels, and the job script of a slurm or pbs cluster; "
        "read nothing",
    )
    p.add_argument(
        "--report", type=Path, metavar="FILE.html", help="keep Dask's performance report of the run"
    )
    add_quiet(p)


@command("run", "map the regions of a workflow YAML", _run_arguments)
def run(args: argparse.Namespace) -> int:
    from pipeline.run.cluster import EarlyCluster
    from pipeline.workflow.load import load_workflow, with_cluster

    workflow = load_workflow(args.workflow)
    if args.cluster:
        workflow = with_cluster(workflow, args.cluster)
    # Where the scheduler and its dashboard are is worth a line even without --verbose.
    cluster_log = logging.getLogger("pipeline.run.cluster")
    cluster_log.setLevel(min(cluster_log.getEffectiveLevel(), logging.INFO))
    early = contextlib.nullcontext() if args.dry_run else EarlyCluster(workflow)
    try:
        with early as started:
            # Seconds of imports (torch, GDAL), while a local cluster's workers start.
            from pipeline.run.execute import run_workflow

            summary = run_workflow(
                workflow,
                dry_run=args.dry_run,
                progress=not args.quiet,
                report=args.report,
                early=started,
            )
    except OSError as err:
        if err.filename is None and err.errno is not None:  # e.g. a worker's write, disk full
            raise OSError(err.errno, err.strerror, str(workflow.outputs.dir)) from err
        raise
    if not args.dry_run:
        print(summary.report())
    return 0


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", type=Path, help="workflow YAML file")


@command("validate", "check a workflow YAML without doing any work", _validate_arguments)
def validate(args: argparse.Namespace) -> int:
    from pipeline.workflow.load import load_workflow

    workflow = load_workflow(args.workflow)
    regions = ", ".join(r.name for r in workflow.regions)
    tasks = ", ".join(t.name for t in workflow.tasks)
    print(f"{args.workflow}: valid ({workflow.year}; regions: {regions}; tasks: {tasks})")
    return 0


def _classes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("set", nargs="?", help="a class set name, e.g. land_cover")


@command("classes", "list the built-in class sets, or the classes of one", _classes_arguments)
def classes(args: argparse.Namespace) -> int:
    from encoder.classes import class_set, class_set_names
    from pipeline.maps.style import class_colors

    if args.set is None:
        for name in class_set_names():
            print(f"{name:16s} {len(class_set(name)):3d} classes")
        return 0
    members = class_set(args.set)
    for value, (spec, color) in enumerate(
        zip(members, class_colors(members), strict=True), start=1
    ):
        print(f"{value:3d}  {color}  {spec.name}")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        help="folder for the demo's inputs and maps (default: timesenclip-demo in the cache "
        "folder, $TIMESENCLIP_CACHE or ~/.cache/timesenclip)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete an earlier demo in that folder and redo it"
    )
    add_quiet(p)


@command("demo", "run the whole pipeline offline on synthetic data", _demo_arguments)
def demo(args: argparse.Namespace) -> int:
    from fixtures.demo import run_demo

    run_demo(args.out, progress=not args.quiet, fresh=args.fresh)
    return 0


COMMANDS = (run, validate, classes, demo)
