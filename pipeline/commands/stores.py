"""Verbs on kept embedding stores: re-classify, query by text, by exemplar pixels, change."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.command import command
from pipeline.commands.options import (
    add_clip,
    add_ramp,
    add_templates,
    clip_options,
    lonlat,
    print_paths,
    ramp_options,
)

_STORE_HELP = "embeddings.zarr written by `run` (outputs.embeddings: float16 or int8)"


def _classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help="embeddings.zarr written by `run` (outputs.embeddings)")
    p.add_argument(
        "--classes",
        required=True,
        help="a built-in class set name, or comma-separated names, e.g. 'vineyard,olive grove'",
    )
    p.add_argument("--name", default="custom", help="task name used for the output files")
    add_templates(p)
    p.add_argument("--out", type=Path, help="output folder (default: beside the store)")
    add_clip(p, model=None, pretrained=None)


@command("classify", "re-classify a stored embeddings.zarr with new classes", _classify_arguments)
def classify(args: argparse.Namespace) -> int:
    from pipeline.store.reclassify import classify_store

    return print_paths(
        classify_store(
            args.store,
            classes=args.classes,
            name=args.name,
            templates=args.templates,
            out_dir=args.out,
            **clip_options(args),
        )
    )


def _query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help=_STORE_HELP)
    p.add_argument("texts", nargs="+", help="one map per text, e.g. 'flooded rice paddies'")
    p.add_argument("--templates", default="class_names", help="template set name")
    add_ramp(p)
    add_clip(p, model=None, pretrained=None)


@command("query", "similarity map of a kept store to each of some texts", _query_arguments)
def query(args: argparse.Namespace) -> int:
    from pipeline.store.query import query_store

    return print_paths(
        query_store(
            args.store,
            args.texts,
            templates=args.templates,
            **ramp_options(args),
            **clip_options(args),
        )
    )


def _similar_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help=_STORE_HELP)
    exemplars = p.add_mutually_exclusive_group(required=True)
    exemplars.add_argument("--point", type=lonlat, metavar="LON,LAT", help="one exemplar pixel")
    exemplars.add_argument(
        "--geojson", type=Path, help="points and polygons (lon/lat) whose pixels are exemplars"
    )
    p.add_argument("--name", help="output file name (default: from the point or file)")
    add_ramp(p)


@command("similar", "similarity map of a kept store to exemplar pixels", _similar_arguments)
def similar(args: argparse.Namespace) -> int:
    from pipeline.store.query import similar_store

    return print_paths(
        similar_store(
            args.store,
            point=args.point,
            geojson=args.geojson,
            name=args.name,
            **ramp_options(args),
        )
    )


def _change_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store_a", type=Path, help="the earlier year's embeddings.zarr")
    p.add_argument("store_b", type=Path, help="the later year's, on the same grid")
    p.add_argument("--name", help="output file name (default: change_<year a>_<year b>)")
    add_ramp(p)


@command("change", "per-pixel embedding change between two years' stores", _change_arguments)
def change(args: argparse.Namespace) -> int:
    from pipeline.store.query import change_stores

    return print_paths(
        change_stores(
            args.store_a,
            args.store_b,
            name=args.name,
            **ramp_options(args),
        )
    )


COMMANDS = (classify, query, similar, change)
