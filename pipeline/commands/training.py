"""Verbs of the model half: embed ground photos, build pairs, train, evaluate, convert weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.command import command
from pipeline.commands.options import (
    add_clip,
    add_conventions,
    add_device,
    add_quiet,
    add_templates,
    clip_options,
    overrides,
)
from timesenclip.common.errors import TimeSenCLIPError


def _train_arguments(p: argparse.ArgumentParser) -> None:
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
    add_quiet(p)


@command("train", "train an encoder from a training config YAML", _train_arguments)
def train(args: argparse.Namespace) -> int:
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


def _pairs_arguments(p: argparse.ArgumentParser) -> None:
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


@command("pairs", "build a training pairs store (series + ground embeddings)", _pairs_arguments)
def pairs(args: argparse.Namespace) -> int:
    if args.source == "sen4map":
        from encoder.sen4map import pairs_from_sen4map

        stats = pairs_from_sen4map(args.inputs, args.embeddings, args.out, overwrite=args.overwrite)
    else:
        from pipeline.cube.samples import pairs_from_cube
        from pipeline.search.stac import StacSource

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


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint path or hf-hub:OWNER/REPO/FILE")
    p.add_argument(
        "--data", required=True, type=Path, help="pairs Zarr store, or a Sen4Map HDF5 file"
    )
    p.add_argument("--task", default="land_cover", help="task / class set to evaluate")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    add_templates(p)
    add_device(p)
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
    add_conventions(p)
    add_clip(p, model=None, pretrained=None)


@command("evaluate", "zero-shot accuracy and retrieval of a checkpoint", _evaluate_arguments)
def evaluate(args: argparse.Namespace) -> int:
    from encoder.evaluate import run_evaluation, try_conventions

    chosen = overrides(args)
    common = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "task": args.task,
        "out_dir": args.out,
        "templates": args.templates,
        "device": args.device,
        **clip_options(args),
    }
    if args.try_conventions:
        if chosen:
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
    run_evaluation(**common, transductive=not args.no_transductive, overrides=chosen)
    print(f"report written to {args.out}")
    return 0


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint path (any published layout) or hf-hub:...")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    add_conventions(p)
    p.add_argument(
        "--composite",
        choices=["masked_median", "reference"],
        help="the monthly composite rule maps build this model's input with "
        "(default: as recorded, else masked_median)",
    )


@command(
    "convert",
    "rewrite a checkpoint in our format with its input conventions recorded",
    _convert_arguments,
)
def convert(args: argparse.Namespace) -> int:
    from encoder.checkpoint import convert_checkpoint, load_encoder

    path = convert_checkpoint(args.checkpoint, args.out, overrides(args))
    print(f"{path}: {load_encoder(path).conventions.describe()}")
    return 0


def _ground_embed_arguments(p: argparse.ArgumentParser) -> None:
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
    add_device(p)
    add_clip(p)


@command(
    "ground-embed", "embed ground photo folders with the CLIP image tower", _ground_embed_arguments
)
def ground_embed(args: argparse.Namespace) -> int:
    from encoder.ground import embed_photo_folders

    embed_photo_folders(
        args.photos,
        args.out,
        device=args.device,
        **clip_options(args),
        batch_size=args.batch_size,
    )
    return 0


COMMANDS = (train, pairs, evaluate, convert, ground_embed)
