"""Keep pixel embeddings in a Zarr store, so new texts and classes map without re-encoding.

One store per region, one group per UTM zone, each an xarray Dataset (``xr.open_zarr(store,
group="EPSG32631")``, metadata consolidated): ``embeddings (y, x, dim)`` with ``x``/``y`` pixel
centres and the CRS and transform as rioxarray writes them (CF ``grid_mapping`` ``spatial_ref``).
The zone's array starts on the zone-wide chunk grid, so every processing chunk fills whole Zarr
chunks and parallel writers never share one; the region (the union of the zone's tiles, the
extent of the run's maps) is recorded as a window inside it (``region_window``).

Encodings (``outputs.embeddings``):

- ``float16``: the encoder's output as it is, NaN where a pixel has no valid month; 2 bytes a value.
- ``int8``: the unit-normalised embedding ``u = e / |e|`` stored as ``q = round(127 * u)``
  (round half to even; ``|u_i| <= 1`` so ``q`` stays in -127..127), ``-128`` for every value of a
  pixel without an embedding; decoded as ``q / 127``. One scale for every value and pixel and -128
  as nodata, as AlphaEarth's int8 embeddings are laid out; the mapping is the linear one written
  here, and the CF ``scale_factor`` and ``_FillValue`` say the same, so xarray decodes it too.
  1 byte a value, a quarter of float32. A cosine
  from decoded vectors is off by at most ``sqrt(D) / 127`` and typically by about
  ``1 / (127 sqrt(12)) = 0.0023`` (the spread of the rounding error along a unit direction).

Root attributes (repeated on each zone's group) record what the embeddings mean and how maps from
them must look: year, width, encoding, CLIP text model and weights identity, encoder checkpoint
hash, and the run's COG layout.

Stores of the previous format (``timesenclip-embeddings-v2``: one bare array per zone at the
root) are read as they are, and moved into this layout, data kept, when a run writes into them.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # also registers the .rio accessor
import xarray as xr
import zarr
from affine import Affine

from pipeline.geo.chunks import Chunk
from pipeline.geo.grid import Grid
from pipeline.geo.tiles import Tile
from pipeline.maps.outputs import EMBEDDINGS_STORE, VALID_MONTHS
from timesenclip.common.errors import TimeSenCLIPError

STORE_FORMAT = "timesenclip-embeddings-v3"
ARRAY_FORMAT = "timesenclip-embeddings-v2"  # the previous layout: one bare array per zone
EMBEDDINGS = "embeddings"  # the variable of each zone's group
ENCODINGS = ("float16", "int8")
INT8_SCALE = 127
INT8_NODATA = -128
# Pixels scored at once when reading a store: bounds the float32 copies of a chunk.
READ_PIXELS = 65536
_ASIDE = ".v2"  # a zone array of the previous layout while it is copied into its group


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
    """Create (or reopen) the region's store with one zone group covering each zone's tiles.

    A zone already there with the same grid and encoding keeps what chunks wrote into it (a
    resumed run); a store of the previous layout is moved into this one first, data kept.
    """
    from encoder.prompts import TextEncoder

    encoding = workflow.outputs.embeddings
    path = region_dir / EMBEDDINGS_STORE
    if path.exists() and zarr.open_group(path, mode="r").attrs.get("format") == ARRAY_FORMAT:
        upgrade_store(path)
    root = zarr.open_group(path, mode="a", use_consolidated=False)
    clip = workflow.model.clip
    outputs = workflow.outputs
    store_attrs = {
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
    root.attrs.update(store_attrs)
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
        grid = Grid(epsg, (xmin, ymin, xmax, ymax), res)
        zone_attrs = {
            "epsg": epsg,
            "transform": list(grid.transform)[:6],
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
        key = _zone_key(epsg)
        array = root.get(f"{key}/{EMBEDDINGS}")
        shape = (*grid.shape, dim)
        if not (isinstance(array, zarr.Array) and array.shape == shape and array.dtype == encoding):
            _create_zone(path, key, grid, dim, chunk, encoding)
        zarr.open_group(path, path=key, mode="r+").attrs.update(store_attrs | zone_attrs)
    _consolidate(path)
    return path


def _create_zone(path: Path, key: str, grid: Grid, dim: int, chunk: int, encoding: str) -> None:
    """An empty zone group: the embeddings array (nodata until chunks write it), its x and y
    coordinates and its CRS, written by xarray and rioxarray; no chunk of data is written."""
    ys, xs = grid.centres
    empty = da.empty((*grid.shape, dim), chunks=(chunk, chunk, dim), dtype=np.float32)
    ds = xr.Dataset({EMBEDDINGS: (("y", "x", "dim"), empty)}, coords={"y": ys, "x": xs})
    ds = ds.rio.write_crs(grid.epsg).rio.write_transform(grid.transform)
    ds[EMBEDDINGS].attrs = {"long_name": "TimeSenCLIP pixel embedding", "encoding": encoding}
    ds[EMBEDDINGS].encoding.update(
        {
            "dtype": encoding,
            "chunks": (chunk, chunk, dim),
            # spatial_ref is then a coordinate for xarray's default decoding, not a variable.
            "coordinates": "spatial_ref",
            **(
                {"scale_factor": 1 / INT8_SCALE, "_FillValue": INT8_NODATA}
                if encoding == "int8"
                else {}
            ),
            "fill_value": INT8_NODATA if encoding == "int8" else np.nan,
        }
    )
    ds.to_zarr(path, group=key, mode="w", compute=False, consolidated=False, zarr_format=3)


def _consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        # zarr says the Zarr 3 specification does not cover consolidated metadata yet; zarr and
        # xarray read it, and one read of the store's metadata spares a cluster many small ones.
        warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path)


def upgrade_store(path: Path) -> None:
    """Move a store of the previous layout (one bare array per zone) into zone groups.

    Each zone array is first moved aside, then copied a row of chunks at a time into its group;
    the format changes last, so an interrupted upgrade resumes where it stopped.
    """
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    for key, _ in list(root.arrays()):
        if not key.endswith(_ASIDE):
            os.replace(path / key, path / f"{key}{_ASIDE}")
    for aside in sorted(path.glob(f"*{_ASIDE}")):
        old = zarr.open_array(aside, mode="r")
        attrs = dict(old.attrs)
        height, width, dim = old.shape
        transform = Affine(*attrs["transform"])
        left, top, res = transform.c, transform.f, transform.a
        grid = Grid(int(attrs["epsg"]), (left, top - height * res, left + width * res, top), res)
        key = aside.name.removesuffix(_ASIDE)
        _create_zone(path, key, grid, dim, old.chunks[0], attrs["encoding"])
        group = zarr.open_group(path, path=key, mode="r+")
        new = group[EMBEDDINGS]
        for row in range(0, height, old.chunks[0]):
            new[row : row + old.chunks[0]] = old[row : row + old.chunks[0]]
        group.attrs.update(dict(root.attrs) | {"format": STORE_FORMAT} | attrs)
        shutil.rmtree(aside)
    root.attrs["format"] = STORE_FORMAT
    _consolidate(path)


def write_chunk_embeddings(store: Path, chunk: Chunk, embeddings: np.ndarray) -> None:
    """Write one chunk's ``(pixels, D)`` embeddings into its zone array, in its encoding."""
    array, attrs = _zone_array(zarr.open_group(store, mode="r+")[_zone_key(chunk.tile.epsg)])
    col, row = ~Affine(*attrs["transform"]) * (chunk.bounds[0], chunk.bounds[3])
    row, col = round(row), round(col)
    block = embeddings.reshape(chunk.height, chunk.width, -1)
    array[row : row + chunk.height, col : col + chunk.width, :] = encode_embeddings(
        block, attrs["encoding"]
    )


def _zone_array(node: zarr.Group | zarr.Array) -> tuple[zarr.Array, dict[str, Any]]:
    """A zone's embeddings array and its attributes, in either layout."""
    if isinstance(node, zarr.Array):  # the previous layout: the array is the zone
        return node, dict(node.attrs)
    return node[EMBEDDINGS], dict(node.attrs)


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
    attrs: Mapping[str, Any] = field(default_factory=dict)  # the store's and the zone's

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
        # Not the consolidated metadata: a few small reads, and never a stale copy.
        root = zarr.open_group(path, mode="r", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.NodeTypeValidationError):
        raise TimeSenCLIPError(
            f"{path} is not an embeddings store: give the embeddings.zarr folder that "
            "`timesenclip run` wrote with outputs.embeddings: float16 or int8."
        ) from None
    attrs = dict(root.attrs)
    found = attrs.get("format")
    if found is None:
        raise TimeSenCLIPError(
            f"{path} is a Zarr group but no timesenclip embeddings store (it records no format): "
            "give the embeddings.zarr folder that `timesenclip run` wrote with "
            "outputs.embeddings: float16 or int8."
        )
    if found not in (STORE_FORMAT, ARRAY_FORMAT):
        raise TimeSenCLIPError(
            f"{path} was written by an older timesenclip (format {found!r}, not "
            f"{STORE_FORMAT!r}) and does not record its region grid: run the workflow again to "
            "rewrite it."
        )
    nodes = root.arrays() if found == ARRAY_FORMAT else root.groups()
    zones = []
    for _, node in sorted(nodes, key=lambda kv: kv[0]):
        array, a = _zone_array(node)
        row, col, height, width = a["region_window"]
        transform = Affine(*a["transform"]) * Affine.translation(col, row)
        zones.append(
            Zone(
                int(a["epsg"]),
                array,
                a["encoding"],
                row,
                col,
                height,
                width,
                transform,
                attrs | {k: v for k, v in a.items() if k != "format"},
            )
        )
    if not zones:
        raise TimeSenCLIPError(
            f"{path} holds no embeddings yet: let `timesenclip run` finish the region first."
        )
    return Store(path, attrs, zones)


def zone_dataset(store: Store, zone: Zone) -> xr.Dataset:
    """A zone's region as a lazy Dataset: ``embeddings (y, x, dim)`` float32 decoded as
    ``Zone.read`` decodes (NaN where a pixel has none), the CRS and transform by rioxarray, the
    store's and the zone's attributes; one Dask chunk per Zarr chunk. The run's
    ``valid_months`` map beside the store comes along when it is there."""
    stored = da.from_zarr(zone.array)[
        zone.row : zone.row + zone.height, zone.col : zone.col + zone.width
    ]
    decoded = stored.map_blocks(decode_embeddings, zone.encoding, dtype=np.float32)
    res = zone.transform.a
    left, top = zone.transform.c, zone.transform.f
    grid = Grid(zone.epsg, (left, top - zone.height * res, left + zone.width * res, top), res)
    ys, xs = grid.centres
    # The zone's transform is the whole array's: rioxarray's spatial_ref holds the window's.
    attrs = {k: v for k, v in zone.attrs.items() if k != "transform"}
    ds = xr.Dataset(
        {EMBEDDINGS: (("y", "x", "dim"), decoded)}, coords={"y": ys, "x": xs}, attrs=attrs
    )
    ds[EMBEDDINGS].attrs = {"long_name": "TimeSenCLIP pixel embedding"}
    valid_months = store.valid_months(zone)
    if valid_months is not None:
        chunks = {"y": zone.array.chunks[0], "x": zone.array.chunks[1]}
        opened = rioxarray.open_rasterio(valid_months, chunks=chunks)
        if opened.rio.transform() == grid.transform and opened.shape[1:] == grid.shape:
            ds[VALID_MONTHS] = (("y", "x"), opened.data[0], {"_FillValue": opened.rio.nodata})
    return ds.rio.write_crs(zone.epsg).rio.write_transform(grid.transform)
