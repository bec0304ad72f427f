"""``timesenclip demo``: the whole pipeline offline, to prove an install works without a network.

Synthetic imagery is served by a local STAC API and mapped with a tiny untrained model, so the
map shows the synthetic scene's structure only by chance: it is NOT a meaningful land-cover map.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from rasterio.warp import transform_bounds

from encoder.atomic import write_text_atomic
from encoder.checkpoint import EncoderMetadata, save_checkpoint
from encoder.errors import TimeSenCLIPError
from encoder.prompts import default_cache_dir
from encoder.tiny import tiny_encoder, write_tiny_clip
from encoder.version import package_version
from pipeline.run import run_workflow
from pipeline.stac_server import serve_stac
from pipeline.synthetic import SyntheticCollection, write_synthetic_collection
from pipeline.workflow import load_workflow

DEMO_DIM = 32
NOT_MEANINGFUL = (
    "NOTE: the demo maps synthetic imagery with a tiny UNTRAINED model: its classes are not "
    "meaningful. It shows that search, cubes, Dask, the encoder, classification and COG output "
    "all work on this machine. For real maps, run a workflow such as "
    "workflows/montpellier-2023.yaml."
)


# The imagery straddles a corner of the 2560 m tile grid, so the region spans four tiles and the
# mosaics show that tile edges join without seams.
DEMO_ORIGIN = (501000.0, 4800800.0)


def write_demo_inputs(
    root: Path, shape: tuple[int, int] = (160, 160)
) -> tuple[dict, SyntheticCollection]:
    """Synthetic scenes, tiny CLIP and encoder under ``root``: (workflow dict, collection)."""
    data = root / "data"
    synthetic = write_synthetic_collection(
        data / "scenes", origin=DEMO_ORIGIN, shape=shape, cloud_fraction=0.3
    )
    clip_dir = write_tiny_clip(data / "tiny-clip", embed_dim=DEMO_DIM)
    checkpoint = data / "tiny-encoder.pt"
    save_checkpoint(
        tiny_encoder(DEMO_DIM),
        checkpoint,
        metadata=EncoderMetadata(clip_model=f"local-dir:{clip_dir}", clip_pretrained=None),
    )
    xmin, ymin, xmax, ymax = synthetic.bounds
    inset = 25.0  # keep the region inside the imagery so the map has no empty border
    bbox = transform_bounds(
        f"EPSG:{synthetic.epsg}",
        "EPSG:4326",
        xmin + inset,
        ymin + inset,
        xmax - inset,
        ymax - inset,
    )
    workflow = {
        "name": "demo",
        "year": 2023,
        "regions": [{"name": "synthetic", "bbox": [round(v, 6) for v in bbox]}],
        "stac": {
            "url": "http://127.0.0.1:0",
            "collection": "sentinel-2-l2a",
            "max_cloud_cover": 90,
        },
        "cube": {"resolution": 10, "tile_size": 256, "chunk_size": 64},
        "model": {
            "checkpoint": str(checkpoint),
            "clip": {"model": f"local-dir:{clip_dir}"},
            "device": "cpu",
            "batch_size": 4096,
        },
        "tasks": [
            {"name": "land_cover", "classes": "land_cover"},
            {
                "name": "custom",
                "classes": [
                    {"name": "forest", "color": "#1b5e20"},
                    {"name": "cropland", "color": "#f9a825"},
                    {"name": "water", "color": "#1565c0"},
                    {"name": "built-up area", "color": "#c62828"},
                ],
            },
        ],
        "outputs": {
            "dir": str(root / "out"),
            "confidence": True,
            "embeddings": True,
            "blocksize": 128,  # small tiles so that even this small map gets overviews
        },
        "dask": {"n_workers": 1},
    }
    return workflow, synthetic


DEMO_FILES = ("data", "out", "workflow.yaml", "demo.json")
"""Everything the demo writes in its folder; ``--fresh`` deletes these and nothing else."""


def demo_folder(out: Path | None = None) -> Path:
    """Where the demo works: ``out``, else ``timesenclip-demo`` in the cache folder."""
    return (out if out is not None else default_cache_dir() / "timesenclip-demo").resolve()


def demo_stamp() -> dict:
    """What the demo's inputs and maps depend on: an earlier demo with another stamp is redone."""
    return {"version": package_version(), "dim": DEMO_DIM, "origin": list(DEMO_ORIGIN)}


def earlier_demo(root: Path) -> tuple[bool, str]:
    """(whether the demo in ``root`` can be reused as it is, the reason, for the user)."""
    stamp_path = root / "demo.json"
    if not stamp_path.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise TimeSenCLIPError(
                f"{root} is not empty and holds no earlier demo: give --out a new or empty "
                "folder, so that the demo neither mixes with nor deletes your files."
            )
        return False, f"no earlier demo in {root}: running it"
    try:
        earlier = json.loads(stamp_path.read_text())
    except (OSError, json.JSONDecodeError):
        earlier = None
    if earlier != demo_stamp():
        made_by = earlier.get("version") if isinstance(earlier, dict) else None
        return False, (
            f"the demo in {root} was made by timesenclip {made_by or 'of another version'}, "
            f"not {package_version()}: redoing it"
        )
    # provenance.json is the run's last file: without it the demo was stopped before the end.
    if not (root / "out" / "synthetic" / "provenance.json").is_file():
        return False, f"the demo in {root} did not finish: redoing it"
    return True, f"the demo in {root} is complete and made by this version: reusing it"


def run_demo(out: Path | None = None, *, progress: bool = True, fresh: bool = False) -> Path:
    """Run the demo in ``demo_folder(out)``, or reuse a complete earlier one made by this version
    (``fresh`` redoes it); print what it did and where the maps are; return that folder."""
    root = demo_folder(out)
    if fresh and (root / "demo.json").is_file():
        reuse, reason = False, f"--fresh: deleting the demo in {root} and redoing it"
    else:
        reuse, reason = earlier_demo(root)
    print(f"{reason[:1].upper()}{reason[1:]}" + (" (--fresh redoes it)." if reuse else "."))
    if not reuse:
        for name in DEMO_FILES:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        # The stamp goes first: it marks the folder as the demo's, finished or not.
        write_text_atomic(root / "demo.json", json.dumps(demo_stamp()) + "\n")
        workflow, synthetic = write_demo_inputs(root)
        with serve_stac(synthetic.collection, synthetic.items, root / "data" / "stac") as url:
            workflow["stac"]["url"] = url
            path = root / "workflow.yaml"
            path.write_text(yaml.safe_dump(workflow, sort_keys=False))
            print(run_workflow(load_workflow(path), progress=progress).report())
    print(NOT_MEANINGFUL)
    maps = root / "out"
    print(f"Outputs are in {maps}; open the .tif files in QGIS (styles load from the .qml).")
    return maps
