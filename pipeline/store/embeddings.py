"""Keep pixel embeddings in a Zarr store, so new texts and classes map without re-encoding.

One store per region, one array per UTM zone: ``<region>/embeddings.zarr/EPSG<code>`` of shape
``(y, x, D)``. The array's origin sits on the zone-wide chunk grid, so every processing chunk
fills whole Zarr chunks and parallel writers never share one; the region (the union of the
zone's tiles, the extent of the run's maps) is recorded as a window inside it.

Encodings (``outputs.embeddings``):

- ``float16``: the encoder's output as it is, NaN where a pixel has no valid month; 2 bytes a value.
- ``int8``: the unit-normalised embedding ``u = e / |e|`` stored as ``q = round(127 * u)``
  (round half to even; ``|u_i| <= 1`` so ``q`` stays in -127..127), ``-128`` for every value of a
  pixel without an embedding; decoded as ``q / 127``. One scale for every value and pixel and -128
  as nodata, as AlphaEarth's int8 embeddings are laid out; the mapping is the linear one written
  here. 1 byte a value, a quarter of float32. A cosine
  from decoded vectors is off by at most ``sqrt(D) / 127`` and typically by about
  ``1 / (127 sqrt(12)) = 0.0023`` (the spread of the rounding error along a unit direction).

Root attributes record what the embeddings mean and how maps from them must look: year, width,
encoding, CLIP text model and weights identity, encoder checkpoint hash, and the run's COG layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine

from pipeline.geo.chunks import Chunk
from pipeline.geo.tiles import Tile
from pipeline.maps.outputs import EMBEDDINGS_STORE, VALID_MONTHS
from timesenclip.common.errors import TimeSenCLIPError

STORE_FORMAT = "timesenclip-embeddings-v2"
ENCODINGS = ("float16", "int8")
INT8_SCALE = 127
INT8_NODATA = -128
# Pixels scored at once when reading a store: bounds the float32 copies of a chunk.
READ_PIXELS = 65536


def _zone_key(epsg: int) -> str:
    return f"EPSG{epsg}"


def encode_embeddings(embeddings: np.ndarray, encoding: str) -> np.ndarray:
    """Float embeddings ``(..., D)`` (NaN rows = none) in the store's ``encoding``."""
    if encoding == "float16":
        return embeddings.astype(np.float16)
    norm = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    valid = np.isfinite(norm) & (norm > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        quantised = np.rint(np.where(valid, embeddings / norm, 0) * INT8_SCALE)
    return np.where(valid, np.clip(quantised, -INT8_SCALE, INT8_SCALE), INT8_NODATA).astype(np.int8)


def decode_embeddings(stored: np.ndarray, encoding: str) -> np.ndarray:
    """Stored values ``(..., D)`` -> float32, NaN rows where a pixel has no embedding."""
    if encoding == "float16":
        return stored.astype(np.float32)
    values = stored.astype(np.float32) / INT8_SCALE
    return np.where((stored == INT8_NODATA).any(axis=-1, keepdims=True), np.nan, values)


def create_stores(
    region_dir: Path,
    tiles: Sequence[Tile],
    workflow,
    dim: int,
    *,
    checkpoint_sha256: str,
) -> Path:
    """Create (or reopen) the region's store with one array per zone covering its tiles."""
    from encoder.prompts import TextEncoder

    encoding = workflow.outputs.embeddings
    path = region_dir / EMBEDDINGS_STORE
    root = zarr.open_group(path, mode="a")
    clip = workflow.model.clip
    outputs = workflow.outputs
    root.attrs.update(
        {
            "format": STORE_FORMAT,
            "year": workflow.year,
            "dim": dim,
            "encoding": encoding,
            "int8_rule": f"q = round({INT8_SCALE} * e / |e|), nodata {INT8_NODATA}",
            # The text space the embeddings live in: queries must use the same CLIP weights.
            "clip_model": clip.model,
            "clip_pretrained": clip.pretrained,
            "clip_weights": TextEncoder(clip.model, clip.pretrained).weights_id(),
            "checkpoint": workflow.model.checkpoint,
            "checkpoint_sha256": checkpoint_sha256,
            # What the run's maps look like, so maps made from the store match them.
            "layout": {
                "blocksize": outputs.blocksize,
                "overview_resampling": outputs.overview_resampling,
                "confidence": outputs.confidence,
            },
        }
    )
    chunk = workflow.cube.chunk_size
    for epsg in sorted({t.epsg for t in tiles}):
        zone = [t for t in tiles if t.epsg == epsg]
        res = zone[0].resolution
        step = chunk * res
        region = (
            min(t.bounds[0] for t in zone),
            min(t.bounds[1] for t in zone),
            max(t.bounds[2] for t in zone),
            max(t.bounds[3] for t in zone),
        )
        xmin = math.floor(region[0] / step) * step
        ymin = math.floor(region[1] / step) * step
        xmax = math.ceil(region[2] / step) * step
        ymax = math.ceil(region[3] / step) * step
        shape = (round((ymax - ymin) / res), round((xmax - xmin) / res), dim)
        transform = Affine(res, 0, xmin, 0, -res, ymax)
        key = _zone_key(epsg)
        dtype = np.dtype(encoding)
        if not (key in root and root[key].shape == shape and root[key].dtype == dtype):
            root.create_array(
                key,
                shape=shape,
                chunks=(chunk, chunk, dim),
                dtype=dtype,
                fill_value=np.nan if encoding == "float16" else INT8_NODATA,
                overwrite=True,
            )
        root[key].attrs.update(
            {
                "epsg": epsg,
                "transform": list(transform)[:6],
                "resolution": res,
                "encoding": encoding,
                "region_bounds": list(region),
                # (row, col, height, width) of the region inside the array.
                "region_window": [
                    round((ymax - region[3]) / res),
                    round((region[0] - xmin) / res),
                    round((region[3] - region[1]) / res),
                    round((region[2] - region[0]) / res),
                ],
                "tiles": [{"id": t.id, "bounds": list(t.bounds)} for t in zone],
            }
        )
    return path


def write_chunk_embeddings(store: Path, chunk: Chunk, embeddings: np.ndarray) -> None:
    """Write one chunk's ``(pixels, D)`` embeddings into its zone array, in its encoding."""
    array = zarr.open_group(store, mode="r+")[_zone_key(chunk.tile.epsg)]
    col, row = ~Affine(*array.attrs["transform"]) * (chunk.bounds[0], chunk.bounds[3])
    row, col = round(row), round(col)
    block = embeddings.reshape(chunk.height, chunk.width, -1)
    array[row : row + chunk.height, col : col + chunk.width, :] = encode_embeddings(
        block, array.attrs["encoding"]
    )


@dataclass(frozen=True)
class Zone:
    """One zone of a store, seen through the region's window (the grid of the run's maps)."""

    epsg: int
    array: zarr.Array
    encoding: str
    row: int  # the window's offset inside the array
    col: int
    height: int
    width: int
    transform: Affine  # of the window

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def dim(self) -> int:
        return self.array.shape[2]

    def grid(self) -> tuple:
        """What two zones must share for their pixels to be the same places."""
        return self.epsg, tuple(self.transform), self.shape

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Decoded ``(height, width, D)`` float32 embeddings of a window of the region."""
        stored = self.array[
            self.row + row : self.row + row + height, self.col + col : self.col + col + width
        ]
        return decode_embeddings(stored, self.encoding)

    def blocks(self, max_pixels: int = READ_PIXELS) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(row, col, (h, w, D) float32)`` covering the region, a Zarr chunk read at a time."""
        step_y, step_x, _ = self.array.chunks
        top, left = self.row, self.col
        for y0 in range(top - top % step_y, top + self.height, step_y):
            for x0 in range(left - left % step_x, left + self.width, step_x):
                rows = max(y0, top), min(y0 + step_y, top + self.height)
                cols = max(x0, left), min(x0 + step_x, left + self.width)
                stored = self.array[rows[0] : rows[1], cols[0] : cols[1]]
                strip = max(1, max_pixels // stored.shape[1])
                for r in range(0, stored.shape[0], strip):
                    part = decode_embeddings(stored[r : r + strip], self.encoding)
                    yield rows[0] - top + r, cols[0] - left, part


@dataclass(frozen=True)
class Store:
    """An opened embeddings store: its records and its zones."""

    path: Path
    attrs: dict[str, Any]
    zones: list[Zone]

    @property
    def year(self) -> int:
        return int(self.attrs["year"])

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def layout(self) -> dict[str, Any]:
        return self.attrs["layout"]

    def suffix(self, zone: Zone) -> str:
        """The file-name suffix of a zone's maps: none for a one-zone region, as ``run`` does."""
        return "" if len(self.zones) == 1 else f"_EPSG{zone.epsg}"

    def valid_months(self, zone: Zone) -> Path | None:
        """The run's valid-months map of this zone beside the store, if it is there."""
        path = self.path.parent / f"{VALID_MONTHS}{self.suffix(zone)}.tif"
        return path if path.is_file() else None

    def text_encoder(self, model: str | None = None, pretrained: str | None = None):
        """The CLIP text tower the embeddings are aligned to, or the given one if it is the same.

        Another model would give meaningless scores, so it is refused; a moved copy of the same
        weights (same file hashes) is accepted.
        """
        from encoder.prompts import TextEncoder

        recorded = (self.attrs["clip_model"], self.attrs["clip_pretrained"])
        if model is None:
            return TextEncoder(*recorded)
        given = TextEncoder(model, pretrained)
        weights = self.attrs["clip_weights"]
        # A tag ("openai") names weights only together with the model name.
        if given.weights_id() != weights or (weights.startswith("tag:") and model != recorded[0]):
            raise TimeSenCLIPError(
                f"{self.path} holds embeddings aligned to the CLIP text model {recorded[0]!r} "
                f"(pretrained {recorded[1]!r}, weights {self.attrs['clip_weights']}), but "
                f"{model!r} (pretrained {pretrained!r}, weights {given.weights_id()}) was given: "
                "another text model gives meaningless scores. Leave out --clip-model and "
                "--clip-pretrained to use the store's, or give a copy of the same weights."
            )
        return given

    def check_targets(self, targets: np.ndarray, what: str) -> None:
        if targets.shape[-1] != self.dim:
            raise TimeSenCLIPError(
                f"{what} are {targets.shape[-1]}-d but {self.path} holds {self.dim}-d "
                "embeddings: use the CLIP text model the store records."
            )


def open_store(path: Path | str) -> Store:
    """Open a store written by ``run`` with ``outputs.embeddings``; clear errors otherwise."""
    path = Path(path)
    try:
        root = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.NodeTypeValidationError):
        raise TimeSenCLIPError(
            f"{path} is not an embeddings store: give the embeddings.zarr folder that "
            "`timesenclip run` wrote with outputs.embeddings: float16 or int8."
        ) from None
    attrs = dict(root.attrs)
    if attrs.get("format") != STORE_FORMAT:
        raise TimeSenCLIPError(
            f"{path} was written by an older timesenclip (format {attrs.get('format')!r}, not "
            f"{STORE_FORMAT!r}) and does not record its region grid: run the workflow again to "
            "rewrite it."
        )
    zones = []
    for _, array in sorted(root.arrays()):
        a = array.attrs
        row, col, height, width = a["region_window"]
        transform = Affine(*a["transform"]) * Affine.translation(col, row)
        zones.append(Zone(int(a["epsg"]), array, a["encoding"], row, col, height, width, transform))
    if not zones:
        raise TimeSenCLIPError(
            f"{path} holds no embeddings yet: let `timesenclip run` finish the region first."
        )
    return Store(path, attrs, zones)
