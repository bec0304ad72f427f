"""``timesenclip demo``: the whole pipeline offline, to prove an install works without a network.

Synthetic imagery is served by a local STAC API and mapped with a tiny untrained model, so the
map shows the synthetic scene's structure only by chance: it is NOT a meaningful land-cover map.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from rasterio.warp import transform_bounds

from encoder.checkpoint import EncoderMetadata, save_checkpoint
from encoder.tiny import tiny_encoder, write_tiny_clip
from pipeline.run import RunSummary, run_workflow
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


def run_demo(root: Path, *, progress: bool = True) -> RunSummary:
    """Write the demo inputs, serve them over a local STAC API and run the workflow."""
    root = root.resolve()
    workflow, synthetic = write_demo_inputs(root)
    with serve_stac(synthetic.collection, synthetic.items, root / "data" / "stac") as url:
        workflow["stac"]["url"] = url
        path = root / "workflow.yaml"
        path.write_text(yaml.safe_dump(workflow, sort_keys=False))
        summary = run_workflow(load_workflow(path), progress=progress)
    print(summary.report())
    print(NOT_MEANINGFUL)
    print(
        f"Outputs are in {root / 'out'}; open the .tif files in QGIS (styles load from the .qml)."
    )
    return summary
