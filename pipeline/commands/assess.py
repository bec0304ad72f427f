"""Verbs that take a finished map to published numbers: draw a sample, assess, areas per zone."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.command import command
from pipeline.commands.options import print_paths

_MAP_HELP = "class map: a <task>.tif, or the <task>.vrt over a folder of per-tile COGs"


def _map_and_input(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    """The map a verb reads and the file it reads with it (``--reference``, ``--zones``)."""
    p.add_argument("map", type=Path, help=_MAP_HELP)
    p.add_argument(flag, type=Path, required=True, help=help)


def _per_class(text: str) -> tuple[str, int]:
    name, sep, count = text.rpartition("=")
    if not sep or not name.strip() or not count.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected CLASS=N, e.g. 'Woodland=100'; got {text!r}")
    return name.strip(), int(count)


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("map", type=Path, help=_MAP_HELP)
    p.add_argument("--n", type=int, help="total number of points (not needed with --per-class)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="points file: writes POINTS.gpkg and POINTS.csv (id, lon, lat, map class, stratum, "
        "stratum size, inclusion weight, an empty 'reference' column for the interpreter)",
    )
    p.add_argument(
        "--allocation",
        choices=("proportional", "equal"),
        default="proportional",
        help="points per class: proportional to its area with at least --min-per-class each "
        "(default), or equal",
    )
    p.add_argument(
        "--min-per-class",
        type=int,
        default=50,
        help="least points per class under proportional allocation (default 50; a class with "
        "fewer pixels gets them all)",
    )
    p.add_argument(
        "--per-class",
        type=_per_class,
        action="append",
        metavar="CLASS=N",
        help="give the points of one class by name or pixel value (repeat for each class; "
        "classes not named get none)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same points")


@command("sample", "draw a stratified random sample of a class map", _sample_arguments)
def sample(args: argparse.Namespace) -> int:
    from pipeline.assess.design import sample_map

    drawn, paths = sample_map(
        args.map,
        args.n,
        args.out,
        allocation=args.allocation,
        minimum=args.min_per_class,
        per_class=dict(args.per_class) if args.per_class else None,
        seed=args.seed,
    )
    print(drawn.summary())
    return print_paths(paths)


def _assess_arguments(p: argparse.ArgumentParser) -> None:
    _map_and_input(
        p,
        "--reference",
        "labelled points: CSV with lon/lat columns (WGS84), GeoPackage, GeoJSON, GeoParquet, "
        "or a LUCAS table with --lucas",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the report and tables")
    labels = p.add_argument_group("reference labels")
    labels.add_argument(
        "--label",
        default="reference",
        help="column holding each point's reference class (default: reference)",
    )
    labels.add_argument(
        "--class-map",
        type=Path,
        help="CSV (label,class) or YAML (label: class) turning labels into the map's class "
        "names; without it, labels must be class names or pixel values of the map",
    )
    labels.add_argument("--lon", help="longitude column of a CSV (default: lon, longitude, x)")
    labels.add_argument("--lat", help="latitude column of a CSV (default: lat, latitude, y)")
    lucas = p.add_argument_group("LUCAS survey as reference")
    lucas.add_argument(
        "--lucas",
        choices=("land_cover", "land_use"),
        help="read --reference as a LUCAS table; LC1 codes give land_cover classes, LU1 codes "
        "land_use classes, as the published model's labels",
    )
    lucas.add_argument(
        "--lucas-in-situ", action="store_true", help="keep only points observed in the field"
    )
    lucas.add_argument(
        "--lucas-min-lc1-perc",
        type=float,
        help="keep points whose LC1 covers at least this %% (a class like '50 - 75 %%' counts "
        "by its lower bound)",
    )
    lucas.add_argument(
        "--lucas-coords",
        choices=("theoretical", "gps"),
        default="theoretical",
        help="the LUCAS grid point (th_lat/th_long, default) or where the surveyor stood",
    )
    strata = p.add_argument_group(
        "strata that are not the map's classes (Stehman 2014; e.g. LUCAS, or another map's sample)"
    )
    strata.add_argument(
        "--strata", help="column of the reference table naming each point's stratum"
    )
    strata.add_argument(
        "--strata-sizes",
        help="CSV of stratum,size, counted in the units the points were drawn from (pixels; a "
        "survey's grid points), or a column of the reference table holding each point's "
        "stratum size",
    )
    strata.add_argument("--strata-raster", type=Path, help="raster whose values are the strata")
    p.add_argument(
        "--report", choices=("md", "html"), default="md", help="report format (default: md)"
    )


@command("assess", "accuracy and error-adjusted areas of a class map", _assess_arguments)
def assess(args: argparse.Namespace) -> int:
    from pipeline.assess.assessment import StrataSource, assess_map
    from pipeline.assess.lucas import LucasFilter
    from pipeline.assess.reference import ReferenceSource
    from pipeline.assess.report import write_assessment

    reference = ReferenceSource(
        path=args.reference,
        label=args.label,
        class_map=args.class_map,
        lon=args.lon,
        lat=args.lat,
        lucas=args.lucas,
        lucas_filter=LucasFilter(args.lucas_min_lc1_perc, args.lucas_in_situ),
        lucas_coords=args.lucas_coords,
    )
    strata = None
    if args.strata or args.strata_sizes or args.strata_raster:
        strata = StrataSource(args.strata, args.strata_sizes, args.strata_raster)
    assessment = assess_map(args.map, reference, strata)
    acc = assessment.accuracy
    print(f"{assessment.method}; overall accuracy {acc.overall:.3f} (SE {acc.overall_se:.3f})")
    return print_paths(write_assessment(assessment, args.out, args.report))


def _areas_arguments(p: argparse.ArgumentParser) -> None:
    _map_and_input(p, "--zones", "polygons (GeoPackage, GeoJSON or shapefile), in any CRS")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="table, one row per zone: .csv, or .parquet (GeoParquet, with the zones' geometry)",
    )


@command("areas", "class areas in hectares inside each polygon of a file", _areas_arguments)
def areas(args: argparse.Namespace) -> int:
    from pipeline.assess.zonal import write_zonal_areas

    return print_paths([write_zonal_areas(args.map, args.zones, args.out)])


COMMANDS = (sample, assess, areas)
