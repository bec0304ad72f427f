"""Keep pixel embeddings in a Zarr store, so new class lists re-classify without re-encoding.

One store per region, one array per UTM zone: ``<region>/embeddings.zarr/EPSG<code>`` of shape
``(y, x, D)`` float16, NaN where a pixel has no valid month. The array's origin sits on the
zone-wide chunk grid, so every processing chunk fills whole Zarr chunks and parallel writers never
share one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr
from affine import Affine

from pipeline.chunks import Chunk
from pipeline.tiles import Tile

STORE_NAME = "embeddings.zarr"


def _zone_key(epsg: int) -> str:
    return f"EPSG{epsg}"


def create_stores(region_dir: Path, tiles: Sequence[Tile], workflow, dim: int) -> Path:
    """Create (or reopen) the region's store with one array per zone covering its tiles."""
    path = region_dir / STORE_NAME
    root = zarr.open_group(path, mode="a")
    clip = workflow.model.clip
    # The CLIP model the embeddings are aligned to: re-classification must use the same one.
    root.attrs.update(
        {
            "year": workflow.year,
            "dim": dim,
            "clip_model": clip.model,
            "clip_pretrained": clip.pretrained,
        }
    )
    chunk = workflow.cube.chunk_size
    for epsg in sorted({t.epsg for t in tiles}):
        zone = [t for t in tiles if t.epsg == epsg]
        res = zone[0].resolution
        step = chunk * res
        xmin = math.floor(min(t.bounds[0] for t in zone) / step) * step
        ymin = math.floor(min(t.bounds[1] for t in zone) / step) * step
        xmax = math.ceil(max(t.bounds[2] for t in zone) / step) * step
        ymax = math.ceil(max(t.bounds[3] for t in zone) / step) * step
        shape = (round((ymax - ymin) / res), round((xmax - xmin) / res), dim)
        transform = Affine(res, 0, xmin, 0, -res, ymax)
        key = _zone_key(epsg)
        if key in root and root[key].shape == shape:
            continue
        array = root.create_array(
            key,
            shape=shape,
            chunks=(chunk, chunk, dim),
            dtype="float16",
            fill_value=np.nan,
            overwrite=True,
        )
        array.attrs.update({"epsg": epsg, "transform": list(transform)[:6], "resolution": res})
    return path


def zone_transform(array: zarr.Array) -> Affine:
    return Affine(*array.attrs["transform"])


def write_chunk_embeddings(store: Path, chunk: Chunk, embeddings: np.ndarray) -> None:
    """Write one chunk's ``(pixels, D)`` embeddings into its zone array."""
    array = zarr.open_group(store, mode="r+")[_zone_key(chunk.tile.epsg)]
    col, row = ~zone_transform(array) * (chunk.bounds[0], chunk.bounds[3])
    row, col = round(row), round(col)
    block = embeddings.reshape(chunk.height, chunk.width, -1).astype(np.float16)
    array[row : row + chunk.height, col : col + chunk.width, :] = block


def iter_zones(store: Path) -> Iterator[tuple[int, zarr.Array]]:
    """``(epsg, array)`` for every zone of a store."""
    from encoder.errors import TimeSenCLIPError

    try:
        root = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise TimeSenCLIPError(
            f"{store} is not an embeddings store: give the embeddings.zarr folder that "
            "`timesenclip run` wrote with outputs.embeddings: true."
        ) from err
    for _, array in sorted(root.arrays()):
        yield int(array.attrs["epsg"]), array
