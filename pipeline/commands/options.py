"""Options several verbs share (CLIP model, templates, ramps, input conventions) and their parsing.

Light on purpose: the parser is built for every verb, ``--help`` and ``--version`` included.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from encoder.classes import template_set_names


def add_clip(
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


def clip_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The keyword arguments the options of :func:`add_clip` give."""
    return {"clip_model": args.clip_model, "clip_pretrained": args.clip_pretrained}


def add_templates(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        default="class_names",
        choices=template_set_names(),
        help="prompt template set (default: class_names, the bare class names)",
    )


def add_ramp(parser: argparse.ArgumentParser) -> None:
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


def ramp_options(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments the options of :func:`add_ramp` give."""
    return {"out_dir": args.out, "contrast": args.contrast, "float16": args.float16}


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def add_conventions(parser: argparse.ArgumentParser) -> None:
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


def overrides(args: argparse.Namespace):
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


def lonlat(text: str) -> tuple[float, float]:
    """``LON,LAT`` in degrees, for ``type=``."""
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LON,LAT in degrees, e.g. 3.87,43.61; got {text!r}"
        ) from None
    return lon, lat


def print_paths(paths: Sequence[Path]) -> int:
    for path in paths:
        print(path)
    return 0
