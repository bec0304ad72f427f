"""The ``timesenclip`` command line: one verb per job, ``--help`` on each."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from encoder.errors import TimeSenCLIPError

VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}


def verb(name: str) -> Callable:
    def register(func: Callable[[argparse.Namespace], int]) -> Callable:
        VERBS[name] = func
        return func

    return register


@verb("run")
def _run(args: argparse.Namespace) -> int:
    from pipeline.run import run_workflow
    from pipeline.workflow import load_workflow

    workflow = load_workflow(args.workflow)
    summary = run_workflow(
        workflow, scheduler=args.scheduler, dry_run=args.dry_run, progress=not args.quiet
    )
    if not args.dry_run:
        print(summary.report())
    return 0


@verb("validate")
def _validate(args: argparse.Namespace) -> int:
    from pipeline.workflow import load_workflow

    workflow = load_workflow(args.workflow)
    regions = ", ".join(r.name for r in workflow.regions)
    tasks = ", ".join(t.name for t in workflow.tasks)
    print(f"{args.workflow}: valid ({workflow.year}; regions: {regions}; tasks: {tasks})")
    return 0


@verb("classes")
def _classes(args: argparse.Namespace) -> int:
    from encoder.prompts import class_colors, class_set, class_set_names

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
    from pipeline.demo import run_demo

    run_demo(args.out, progress=not args.quiet)
    return 0


@verb("train")
def _train(args: argparse.Namespace) -> int:
    from encoder.train import run_training

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
    from encoder.evaluate import run_evaluation

    run_evaluation(
        checkpoint=args.checkpoint,
        data=args.data,
        task=args.task,
        out_dir=args.out,
        templates=args.templates,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        device=args.device,
        transductive=not args.no_transductive,
    )
    print(f"report written to {args.out}")
    return 0


@verb("pairs")
def _pairs(args: argparse.Namespace) -> int:
    if args.source == "sen4map":
        from encoder.pairs import pairs_from_sen4map

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timesenclip",
        description="Zero-shot land-cover, land-use, crop-type and habitat maps from Sentinel-2 "
        "time series with TimeSenCLIP.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("run", help="map the regions of a workflow YAML")
    p.add_argument("workflow", type=Path, help="workflow YAML file")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument(
        "--dry-run", action="store_true", help="list tiles, items and pixels; read nothing"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("validate", help="check a workflow YAML without doing any work")
    p.add_argument("workflow", type=Path)

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
    p.add_argument("--templates", default="class_names", help="template set name")
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
    p.add_argument("--out", type=Path, default=Path("timesenclip-demo"), help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train an encoder from a training config YAML")
    p.add_argument("config", type=Path)
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
    p.add_argument("--data", required=True, type=Path, help="pairs Zarr store")
    p.add_argument("--task", default="land_cover", help="task / class set to evaluate")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    p.add_argument("--templates", default="class_names", help="template set name")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--no-transductive",
        action="store_true",
        help="leave out the transductive per-class normalisation scores",
    )
    _add_clip(p, model=None, pretrained=None)

    p = sub.add_parser("ground-embed", help="embed ground photo folders with the CLIP image tower")
    p.add_argument("photos", type=Path, help="folder of photos (see the docs for the layout)")
    p.add_argument("--out", required=True, type=Path, help="embedding file to write or extend")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    _add_clip(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        # Dask logs every worker start and stop at INFO, here and in the worker processes it
        # spawns (which read the environment); keep that for -vv.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # pipeline.stac logs each retry once; urllib3 would log it a second time.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        return VERBS[args.verb](args)
    except TimeSenCLIPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
