"""The ``timesenclip`` command line: one verb per job, ``--help`` on each."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from encoder.classes import template_set_names
from encoder.errors import TimeSenCLIPError
from encoder.version import package_version

VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}


def verb(name: str) -> Callable:
    def register(func: Callable[[argparse.Namespace], int]) -> Callable:
        VERBS[name] = func
        return func

    return register


@verb("run")
def _run(args: argparse.Namespace) -> int:
    from pipeline.run import run_workflow
    from pipeline.workflow_file import load_workflow

    workflow = load_workflow(args.workflow)
    try:
        summary = run_workflow(
            workflow, scheduler=args.scheduler, dry_run=args.dry_run, progress=not args.quiet
        )
    except OSError as err:
        if err.filename is None and err.errno is not None:  # e.g. a worker's write, disk full
            raise OSError(err.errno, err.strerror, str(workflow.outputs.dir)) from err
        raise
    if not args.dry_run:
        print(summary.report())
    return 0


@verb("validate")
def _validate(args: argparse.Namespace) -> int:
    from pipeline.workflow_file import load_workflow

    workflow = load_workflow(args.workflow)
    regions = ", ".join(r.name for r in workflow.regions)
    tasks = ", ".join(t.name for t in workflow.tasks)
    print(f"{args.workflow}: valid ({workflow.year}; regions: {regions}; tasks: {tasks})")
    return 0


@verb("classes")
def _classes(args: argparse.Namespace) -> int:
    from encoder.classes import class_set, class_set_names
    from pipeline.style import class_colors

    if args.set is None:
        for name in class_set_names():
            print(f"{name:16s} {len(class_set(name)):3d} classes")
        return 0
    classes = class_set(args.set)
    for value, (spec, color) in enumerate(
        zip(classes, class_colors(classes), strict=True), start=1
    ):
        print(f"{value:3d}  {color}  {spec.name}")
    return 0


@verb("classify")
def _classify(args: argparse.Namespace) -> int:
    from pipeline.reclassify import classify_store

    outputs = classify_store(
        args.store,
        classes=args.classes,
        name=args.name,
        templates=args.templates,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        out_dir=args.out,
    )
    for path in outputs:
        print(path)
    return 0


def _lonlat(text: str) -> tuple[float, float]:
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LON,LAT in degrees, e.g. 3.87,43.61; got {text!r}"
        ) from None
    return lon, lat


def _print_paths(paths: Sequence[Path]) -> int:
    for path in paths:
        print(path)
    return 0


@verb("query")
def _query(args: argparse.Namespace) -> int:
    from pipeline.query import query_store

    return _print_paths(
        query_store(
            args.store,
            args.texts,
            out_dir=args.out,
            templates=args.templates,
            contrast=args.contrast,
            float16=args.float16,
            clip_model=args.clip_model,
            clip_pretrained=args.clip_pretrained,
        )
    )


@verb("similar")
def _similar(args: argparse.Namespace) -> int:
    from pipeline.query import similar_store

    return _print_paths(
        similar_store(
            args.store,
            out_dir=args.out,
            point=args.point,
            geojson=args.geojson,
            name=args.name,
            contrast=args.contrast,
            float16=args.float16,
        )
    )


@verb("change")
def _change(args: argparse.Namespace) -> int:
    from pipeline.query import change_stores

    return _print_paths(
        change_stores(
            args.store_a,
            args.store_b,
            out_dir=args.out,
            name=args.name,
            contrast=args.contrast,
            float16=args.float16,
        )
    )


def _add_ramp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--contrast",
        action="store_true",
        help="stretch to the region's 2nd-98th percentile (uint8: values; float16: colours)",
    )
    parser.add_argument(
        "--float16",
        action="store_true",
        help="store the values as float16 (NaN = nodata) instead of uint8 0..200 (255 = nodata)",
    )


@verb("demo")
def _demo(args: argparse.Namespace) -> int:
    from fixtures.demo import run_demo

    run_demo(args.out, progress=not args.quiet, fresh=args.fresh)
    return 0


@verb("train")
def _train(args: argparse.Namespace) -> int:
    from encoder.training.trainer import run_training

    result = run_training(
        args.config,
        resume=args.resume,
        max_steps=args.max_steps,
        device=args.device,
        progress=not args.quiet,
    )
    print(result)
    return 0


@verb("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from encoder.evaluate import run_evaluation, try_conventions

    overrides = _overrides(args)
    common = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "task": args.task,
        "out_dir": args.out,
        "templates": args.templates,
        "clip_model": args.clip_model,
        "clip_pretrained": args.clip_pretrained,
        "device": args.device,
    }
    if args.try_conventions:
        if overrides:
            raise TimeSenCLIPError(
                "--try-conventions scores every candidate convention itself: leave out "
                "--band-order, --constants-order and --single-token-position."
            )
        report = try_conventions(**common, limit=args.limit)
        print(report.table())
        print()
        print(report.recommendation())
        print(f"scores written to {report.json_path}")
        return 0
    run_evaluation(**common, transductive=not args.no_transductive, overrides=overrides)
    print(f"report written to {args.out}")
    return 0


@verb("convert")
def _convert(args: argparse.Namespace) -> int:
    from encoder.checkpoint import convert_checkpoint, load_encoder

    path = convert_checkpoint(args.checkpoint, args.out, _overrides(args))
    print(f"{path}: {load_encoder(path).conventions.describe()}")
    return 0


def _overrides(args: argparse.Namespace):
    """The convention options of ``evaluate`` / ``convert`` (bands comma- or space-separated)."""
    from encoder.conventions import ConventionOverrides

    def bands(values: list[str] | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(b for v in values for b in v.split(",") if b)

    return ConventionOverrides(
        band_order=bands(args.band_order),
        constants_order=bands(args.constants_order),
        single_token_position=args.single_token_position,
        composite=getattr(args, "composite", None),
    )


def _add_conventions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--band-order",
        nargs="+",
        metavar="BAND",
        help="the order of the model's input bands, e.g. B4,B3,B2,B5,B6,B7,B8,B8A,B11,B12 "
        "(default: as recorded in the checkpoint, else B2 first)",
    )
    parser.add_argument(
        "--constants-order",
        nargs="+",
        metavar="BAND",
        help="whose normalisation constants each input band takes, in the same notation "
        "(default: each band its own)",
    )
    parser.add_argument(
        "--single-token-position",
        choices=["mean", "january"],
        help="where a lone token (annual median) sits (default: as recorded, else mean)",
    )


@verb("pairs")
def _pairs(args: argparse.Namespace) -> int:
    if args.source == "sen4map":
        from encoder.sen4map import pairs_from_sen4map

        stats = pairs_from_sen4map(args.inputs, args.embeddings, args.out, overwrite=args.overwrite)
    else:
        from pipeline.pairs_from_cube import pairs_from_cube
        from pipeline.stac import StacSource

        source = StacSource(url=args.stac_url, file=args.stac_file, collection=args.collection)
        stats = pairs_from_cube(
            args.inputs[0],
            args.embeddings,
            args.out,
            source=source,
            year=args.year,
            overwrite=args.overwrite,
        )
    print(stats)
    return 0


@verb("ground-embed")
def _ground_embed(args: argparse.Namespace) -> int:
    from encoder.ground import embed_photo_folders

    embed_photo_folders(
        args.photos,
        args.out,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        device=args.device,
        batch_size=args.batch_size,
    )
    return 0


def _add_clip(
    parser: argparse.ArgumentParser,
    model: str | None = "ViT-B-32",
    pretrained: str | None = "openai",
) -> None:
    recorded = "as recorded in the checkpoint or store"
    parser.add_argument(
        "--clip-model",
        default=model,
        help=f"open_clip model name, or local-dir:FOLDER (default: {model or recorded})",
    )
    parser.add_argument(
        "--clip-pretrained",
        default=pretrained,
        help=f"open_clip pretrained tag or weights file (default: {pretrained or recorded})",
    )


def _add_templates(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        default="class_names",
        choices=template_set_names(),
        help="prompt template set (default: class_names, the bare class names)",
    )


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
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs (each has --help)")

    p = sub.add_parser("run", help="map the regions of a workflow YAML")
    p.add_argument("workflow", type=Path, help="workflow YAML file")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument(
        "--dry-run", action="store_true", help="list tiles, items and pixels; read nothing"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("validate", help="check a workflow YAML without doing any work")
    p.add_argument("workflow", type=Path, help="workflow YAML file")

    p = sub.add_parser("classes", help="list the built-in class sets, or the classes of one")
    p.add_argument("set", nargs="?", help="a class set name, e.g. land_cover")

    p = sub.add_parser("classify", help="re-classify a stored embeddings.zarr with new classes")
    p.add_argument("store", type=Path, help="embeddings.zarr written by `run` (outputs.embeddings)")
    p.add_argument(
        "--classes",
        required=True,
        help="a built-in class set name, or comma-separated names, e.g. 'vineyard,olive grove'",
    )
    p.add_argument("--name", default="custom", help="task name used for the output files")
    _add_templates(p)
    p.add_argument("--out", type=Path, help="output folder (default: beside the store)")
    _add_clip(p, model=None, pretrained=None)

    store_help = "embeddings.zarr written by `run` (outputs.embeddings: float16 or int8)"
    p = sub.add_parser("query", help="similarity map of a kept store to each of some texts")
    p.add_argument("store", type=Path, help=store_help)
    p.add_argument("texts", nargs="+", help="one map per text, e.g. 'flooded rice paddies'")
    p.add_argument("--templates", default="class_names", help="template set name")
    _add_ramp(p)
    _add_clip(p, model=None, pretrained=None)

    p = sub.add_parser("similar", help="similarity map of a kept store to exemplar pixels")
    p.add_argument("store", type=Path, help=store_help)
    exemplars = p.add_mutually_exclusive_group(required=True)
    exemplars.add_argument("--point", type=_lonlat, metavar="LON,LAT", help="one exemplar pixel")
    exemplars.add_argument(
        "--geojson", type=Path, help="points and polygons (lon/lat) whose pixels are exemplars"
    )
    p.add_argument("--name", help="output file name (default: from the point or file)")
    _add_ramp(p)

    p = sub.add_parser("change", help="per-pixel embedding change between two years' stores")
    p.add_argument("store_a", type=Path, help="the earlier year's embeddings.zarr")
    p.add_argument("store_b", type=Path, help="the later year's, on the same grid")
    p.add_argument("--name", help="output file name (default: change_<year a>_<year b>)")
    _add_ramp(p)

    p = sub.add_parser("demo", help="run the whole pipeline offline on synthetic data")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for the demo's inputs and maps (default: timesenclip-demo in the cache "
        "folder, $TIMESENCLIP_CACHE or ~/.cache/timesenclip)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete an earlier demo in that folder and redo it"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train an encoder from a training config YAML")
    p.add_argument(
        "config",
        type=Path,
        help="training config YAML: sections data, model, clip, train, validation, output "
        "(README.md, 'Training an encoder', has an example)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in the output folder, or from CHECKPOINT",
    )
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--device", help="auto | cpu | cuda (default: the config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("pairs", help="build a training pairs store (series + ground embeddings)")
    p.add_argument(
        "source", choices=["sen4map", "cube"], help="Sen4Map HDF5 files, or our own cubes"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="sen4map: HDF5 files; cube: one points file (CSV lon,lat,point_id or GeoJSON)",
    )
    p.add_argument(
        "--embeddings", required=True, type=Path, help="ground embeddings (ground-embed)"
    )
    p.add_argument("--out", required=True, type=Path, help="pairs Zarr store to write")
    p.add_argument("--stac-url", help="cube: STAC API to search")
    p.add_argument("--stac-file", type=Path, help="cube: local STAC items file instead")
    p.add_argument("--collection", default="sentinel-2-l2a", help="cube: STAC collection")
    p.add_argument("--year", type=int, help="cube: year of the series")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")

    p = sub.add_parser("evaluate", help="zero-shot accuracy and retrieval of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or hf-hub:OWNER/REPO/FILE")
    p.add_argument(
        "--data", required=True, type=Path, help="pairs Zarr store, or a Sen4Map HDF5 file"
    )
    p.add_argument("--task", default="land_cover", help="task / class set to evaluate")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    _add_templates(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--no-transductive",
        action="store_true",
        help="leave out the transductive per-class normalisation scores",
    )
    p.add_argument(
        "--try-conventions",
        action="store_true",
        help="score every candidate band order and lone-token position, recommend the best",
    )
    p.add_argument(
        "--limit", type=int, help="--try-conventions: score a random subset of this many points"
    )
    _add_conventions(p)
    _add_clip(p, model=None, pretrained=None)

    p = sub.add_parser(
        "convert", help="rewrite a checkpoint in our format with its input conventions recorded"
    )
    p.add_argument("checkpoint", help="checkpoint path (any published layout) or hf-hub:...")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    _add_conventions(p)
    p.add_argument(
        "--composite",
        choices=["masked_median", "reference"],
        help="the monthly composite rule maps build this model's input with "
        "(default: as recorded, else masked_median)",
    )

    p = sub.add_parser("ground-embed", help="embed ground photo folders with the CLIP image tower")
    p.add_argument(
        "photos",
        type=Path,
        help="folder of ground photos, one per direction W, E, N, S of each point: "
        "PHOTOS/<point_id>/W.jpg or PHOTOS/<point_id>_W.jpg (.jpg, .jpeg or .png)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="embedding file to write or extend: .zarr (best for many photos), .pt or .npz; "
        "points already in it are skipped",
    )
    p.add_argument("--batch-size", type=int, default=64, help="photos per CLIP batch (default: 64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    _add_clip(p)
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
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        # Dask logs every worker start and stop at INFO, here and in the worker processes it
        # spawns (which read the environment); keep that for -vv.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # pipeline.stac logs each retry once; urllib3 would log it a second time.
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
        from pipeline.cluster_errors import CLUSTER_EXIT, cluster_failure_message

        if isinstance(err, OSError) and (message := os_error_message(err)):
            print(f"error: {message}", file=sys.stderr)
            return 2
        if message := cluster_failure_message(err):
            print(f"error: {message}", file=sys.stderr)
            return CLUSTER_EXIT
        raise


if __name__ == "__main__":
    sys.exit(main())
