"""``timesenclip classify``: new class lists over kept embeddings, without re-encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from encoder.prompts import TextEncoder, is_class_set, resolve_classes
from pipeline.classify import classify, plan_task
from pipeline.cog import CLASS_NODATA, CONFIDENCE_NODATA, write_cog
from pipeline.embeddings import iter_zones, zone_transform
from pipeline.publish import describe_map, map_style


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

    The CLIP model defaults to the one the store records (the run's ``model.clip``).
    """
    zones = list(iter_zones(store))
    attrs = zarr.open_group(store, mode="r").attrs
    if clip_model is None:
        clip_model, clip_pretrained = attrs["clip_model"], attrs["clip_pretrained"]
    out_dir = Path(out_dir) if out_dir else Path(store).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    text = TextEncoder(model=clip_model, pretrained=clip_pretrained)
    task = plan_task(name, parse_classes(classes), templates, text)
    year = attrs["year"]
    outputs = []
    for epsg, array in zones:
        labels, confidence = classify_array(array, task)
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"
        transform = zone_transform(array)
        path = out_dir / f"{name}{suffix}.tif"
        conf_path = out_dir / f"{name}{suffix}_confidence.tif"
        write_cog(
            conf_path,
            confidence,
            transform=transform,
            crs=epsg,
            nodata=CONFIDENCE_NODATA,
            overview_resampling="average",
        )
        write_cog(
            path,
            labels,
            transform=transform,
            crs=epsg,
            nodata=CLASS_NODATA,
            overview_resampling="mode",
            **map_style(task),
        )
        outputs += [
            path,
            conf_path,
            *describe_map(path, task, year=year, confidence_path=conf_path),
        ]
    return outputs


def classify_array(array: zarr.Array, task) -> tuple[np.ndarray, np.ndarray]:
    """Score a ``(y, x, D)`` embeddings array chunk by chunk."""
    height, width, _ = array.shape
    step_y, step_x, _ = array.chunks
    labels = np.full((height, width), CLASS_NODATA, np.uint8)
    confidence = np.full((height, width), CONFIDENCE_NODATA, np.uint8)
    for row in range(0, height, step_y):
        for col in range(0, width, step_x):
            block = array[row : row + step_y, col : col + step_x].astype(np.float32)
            h, w, dim = block.shape
            values, conf = classify(block.reshape(-1, dim), task)
            labels[row : row + h, col : col + w] = values.reshape(h, w)
            confidence[row : row + h, col : col + w] = conf.reshape(h, w)
    return labels, confidence
