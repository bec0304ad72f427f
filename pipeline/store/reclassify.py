"""``timesenclip classify``: new class lists over kept embeddings, without re-encoding.

The maps are the ones ``run`` writes for the same classes: the region's extent and grid, the
run's block size, overview resampling, confidence layer, styles and STAC Items, all recorded in
the store (see ``pipeline.store.embeddings``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoder.prompts import is_class_set, resolve_classes
from pipeline.maps.classify import Plan, plan_task, publish_plan
from pipeline.maps.cog import write_cog
from pipeline.maps.provenance import recorded_skips
from pipeline.maps.stac_items import note_skips
from pipeline.store.embeddings import Store, Zone, open_store


def parse_classes(text: str) -> list:
    """A built-in set name, or comma-separated class names."""
    if is_class_set(text):
        return resolve_classes(text)
    return resolve_classes([name.strip() for name in text.split(",") if name.strip()])


def classify_store(
    store: Path,
    *,
    classes: str,
    name: str = "custom",
    templates: str = "class_names",
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    out_dir: Path | None = None,
) -> list[Path]:
    """Classify every zone of an embeddings store and write ``<name>.tif`` with style and Item.

    The CLIP model defaults to the one the store records (the run's ``model.clip``); another one
    is refused. ``out_dir`` defaults to the store's folder (the region's, beside the run's maps).
    """
    kept = open_store(store)
    text = kept.text_encoder(clip_model, clip_pretrained)
    task = plan_task(name, parse_classes(classes), templates, text)
    kept.check_targets(task.weights, "the class embeddings")
    outputs = write_store_maps(kept, task, Path(out_dir) if out_dir else kept.path.parent)
    skipped = recorded_skips(kept.path.parent)
    if skipped is not None:  # the embeddings were made without these reads, so the maps were too
        note_skips(outputs, skipped)
    return outputs


def score_zone(zone: Zone, plan: Plan, confidence: bool) -> dict[str, np.ndarray]:
    """A plan's layers over a zone's region, scored a block of the store at a time."""
    layers = {
        name: np.full(zone.shape, nodata, np.uint8)
        for name, nodata in plan.layers(confidence).items()
    }
    for row, col, block in zone.blocks():
        h, w, dim = block.shape
        for name, values in plan.score(block.reshape(-1, dim), confidence).items():
            layers[name][row : row + h, col : col + w] = values.reshape(h, w)
    return layers


def write_store_maps(store: Store, plan: Plan, out_dir: Path) -> list[Path]:
    """A plan's final files for every zone of a store, as ``run`` writes them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = store.layout
    nodata = plan.layers(layout["confidence"])
    outputs = []
    for zone in store.zones:
        layers = score_zone(zone, plan, layout["confidence"])
        suffix = store.suffix(zone)

        def write(name: str, zone=zone, layers=layers, suffix=suffix, **style) -> Path:
            return write_cog(
                out_dir / f"{name}{suffix}.tif",
                layers[name],
                transform=zone.transform,
                crs=f"EPSG:{zone.epsg}",
                nodata=nodata[name],
                blocksize=layout["blocksize"],
                **style,
            )

        outputs += publish_plan(
            plan,
            write,
            year=store.year,
            confidence=layout["confidence"],
            class_resampling=layout["overview_resampling"],
            valid_months_path=store.valid_months(zone),
        )
    return outputs
