"""A region's last steps once its tiles are done: its maps (one COG per layer and zone, or a
folder of tile COGs under a VRT), their styles and STAC Items, then ``provenance.json``."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.geo.tiles import zone_groups
from pipeline.maps.classify import Plan
from pipeline.maps.cog import mosaic_to_cog
from pipeline.maps.outputs import PROVENANCE, VALID_MONTHS
from pipeline.maps.provenance import record_outputs, write_provenance
from pipeline.maps.stac_items import write_collection
from pipeline.maps.vrt import write_vrt
from pipeline.plan.run_plan import RunPlan
from pipeline.plan.scenes import RegionPlan
from pipeline.run.cluster import RunCluster
from pipeline.run.progress import ProgressWatch, finished
from pipeline.run.worker_tasks import TileReport, layer_styles
from pipeline.workflow.schema import Workflow
from timesenclip.common.atomic import write_text_atomic


def finish_mosaics(
    cluster: RunCluster, workflow: Workflow, region: RegionPlan, tasks: tuple[Plan, ...]
) -> list[Path]:
    """One COG per layer and UTM zone, the mosaics built in parallel on the cluster, then each
    map's styles and STAC Item."""
    from distributed import as_completed

    zones = zone_groups([p.tile for p in region.tiles])
    folders = {p.tile.id: p.folder for p in region.tiles}
    styles = layer_styles(tasks, workflow.outputs.confidence, workflow.outputs.overview_resampling)
    futures = {}
    for epsg, tiles in zones.items():
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"
        for layer, style in styles.items():
            path = region.folder / f"{layer}{suffix}.tif"
            pieces = [folders[t.id] / f"{layer}.tif" for t in tiles]
            futures[(epsg, layer)] = cluster.client.submit(
                mosaic_to_cog,
                pieces,
                path,
                blocksize=workflow.outputs.blocksize,
                pure=False,
                **style,
            )
    keys = {f.key: key for key, f in futures.items()}
    watch = ProgressWatch.of(cluster, workflow)
    queue = as_completed(futures.values(), with_results=True, raise_errors=False)
    paths = {keys[f.key]: path for f, path in finished(queue, watch, region.region.name)}
    outputs = list(paths.values())
    for epsg in zones:
        for task in tasks:  # any plan: its styles and Items
            outputs += task.describe(
                {name: paths[(epsg, name)] for name in task.layers(workflow.outputs.confidence)},
                year=workflow.year,
                valid_months_path=paths[(epsg, VALID_MONTHS)],
            )
    return outputs


def finish_tiled(
    cluster: RunCluster, workflow: Workflow, region: RegionPlan, tasks: tuple[Plan, ...]
) -> list[Path]:
    """Per layer and UTM zone a folder of the tiles' COGs (styled, with overviews), a VRT over
    them styled like its tiles and, for maps with Items, a STAC Collection of per-tile Items."""
    zones = zone_groups([p.tile for p in region.tiles])
    folders = {p.tile.id: p.folder for p in region.tiles}
    styles = layer_styles(tasks, workflow.outputs.confidence, workflow.outputs.overview_resampling)
    outputs = []
    for epsg, tiles in zones.items():
        suffix = "" if len(zones) == 1 else f"_EPSG{epsg}"
        placed: dict[str, list[Path]] = {}
        for layer in styles:
            folder = region.folder / f"{layer}{suffix}"
            folder.mkdir(parents=True, exist_ok=True)
            placed[layer] = []
            for tile in tiles:
                target = folder / f"{tile.id}.tif"
                source = folders[tile.id] / f"{layer}.tif"
                if source.exists():  # else moved there by an interrupted finish
                    for sidecar in source.parent.glob(f"{layer}.tif.*"):
                        os.replace(
                            sidecar, folder / f"{tile.id}.tif{sidecar.name[len(layer) + 4 :]}"
                        )
                    os.replace(source, target)
                placed[layer].append(target)
            vrt = write_vrt(region.folder / f"{layer}{suffix}.vrt", placed[layer])
            outputs.append(vrt)
        for task in tasks:  # any plan: each tile's styles and Items
            for k in range(len(tiles)):
                outputs += task.describe(
                    {name: placed[name][k] for name in task.layers(workflow.outputs.confidence)},
                    year=workflow.year,
                    valid_months_path=placed[VALID_MONTHS][k],
                )
        for layer, tile_maps in placed.items():
            style = tile_maps[0].with_suffix(".qml")
            if style.exists():  # the VRT is drawn like its tiles
                vrt_style = region.folder / f"{layer}{suffix}.qml"
                outputs.append(write_text_atomic(vrt_style, style.read_text()))
            items = [tile_map.with_suffix(".json") for tile_map in tile_maps]
            if all(item.exists() for item in items):
                outputs.append(
                    write_collection(
                        region.folder / f"{layer}{suffix}" / "collection.json",
                        items,
                        title=f"{layer} {workflow.year}, region {region.region.name}",
                    )
                )
    return outputs


def write_region_metadata(
    plan: RunPlan, region: RegionPlan, reports: dict[str, TileReport], outputs: list[Path]
) -> Path:
    """``provenance.json``, written last: its presence marks the region as complete.

    Model, tasks and fingerprint are the plan's; item ids come from what the chunks read, not
    from what the search found.
    """
    used = sorted({i for r in reports.values() for i in r.used})
    refs = {r.id: r for r in plan.scenes.refs}
    record = {
        "fingerprint": region.fingerprint,
        "workflow": plan.workflow.model_dump(mode="json"),
        **plan.provenance(),
        "tasks": [task.record() for task in plan.settings.tasks],
        "stac_items": used,
        "harmonization": [
            {"item_id": i, "offset": refs[i].offset, "rule": refs[i].rule}
            for i in used
            if i in refs
        ],
        "items_refused": list(plan.scenes.skipped),
        "tiles": [
            {
                "id": p.tile.id,
                "epsg": p.tile.epsg,
                "bounds": list(p.tile.bounds),
                "items_used": reports[p.tile.id].used,
                "skipped": reports[p.tile.id].skipped,
            }
            for p in region.tiles
        ],
        "tiles_without_items": [t.id for t in region.empty],
        # Tiles with scenes left out for failures that may pass: the next run redoes them.
        "tiles_to_retry": [p.tile.id for p in region.tiles if reports[p.tile.id].to_retry],
        "outputs": record_outputs(region.folder, outputs),  # what resume verifies
    }
    return write_provenance(region.folder / PROVENANCE, record)
