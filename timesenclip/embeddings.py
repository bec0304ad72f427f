"""Pixel embeddings: of composites by the TimeSenCLIP encoder, or from a kept store."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import torch
import xarray as xr

from encoder.checkpoint import resolve_source
from encoder.device import resolve_device
from encoder.preprocess import BANDS
from encoder.runtime import select_runtime
from pipeline.maps.pixel_encoder import cached_encoder, embed_series, pixel_series
from pipeline.store.embeddings import EMBEDDINGS, open_store, zone_dataset
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.files import file_sha256

# What an embeddings Dataset carries over from the composites it was made of.
_KEPT_ATTRS = ("year", "item_ids", "harmonization", "mask_mode", "cloud_mask")


def embed(
    composites: xr.Dataset,
    *,
    checkpoint: str | Path,
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "fp32",
    batch_size: int = 65536,
) -> xr.Dataset:
    """Lazy per-pixel embeddings of ``monthly_composites``: ``embeddings (y, x, dim)`` float32.

    ``checkpoint`` is an encoder file or ``hf-hub:OWNER/REPO/FILE``, as ``model.checkpoint`` in
    a workflow; ``device`` (auto, cpu, cuda[:N]), ``runtime`` (auto, torch, onnx), ``precision``
    (fp32, bf16) and ``batch_size`` are the workflow's ``model`` settings of the same names. Each
    spatial chunk is embedded as a run embeds a chunk (``pipeline.maps.pixel_encoder``), the
    encoder loaded once per process, so Dask workers of a ``distributed.Client`` load their own.
    A pixel without any clear month gets NaN, as months without data are masked, not invented.
    The checkpoint's own input conventions apply (``timesenclip convert`` records others).

    The Dataset keeps the composites' coordinates, CRS and ``valid_months``; its ``attrs`` record
    the checkpoint (source and sha256) and the CLIP text model it was trained against, which
    ``classify`` and ``similarity`` use.
    """
    composite = _composite(composites)
    path = resolve_source(checkpoint)
    # A hub checkpoint stays a hub source, so workers on other machines fetch it themselves.
    source = str(checkpoint) if str(checkpoint).startswith("hf-hub:") else str(path)
    device = str(resolve_device(device))
    select_runtime(runtime, precision, torch.device(device))  # a bad setting fails here, not later
    model = cached_encoder(source, device)  # the one chunks use, when they run here
    dim = model.config.dim
    data = composite.data.rechunk({0: -1, 1: -1})
    embeddings = da.map_blocks(
        _embed_block,
        data,
        source=source,
        device=device,
        runtime=runtime,
        precision=precision,
        batch_size=batch_size,
        drop_axis=(0, 1),
        new_axis=2,
        chunks=(*data.chunks[2:], (dim,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    meta = model.metadata
    out = xr.Dataset(
        {EMBEDDINGS: (("y", "x", "dim"), embeddings)},
        coords={name: composite.coords[name] for name in ("y", "x")},
        attrs={key: composites.attrs[key] for key in _KEPT_ATTRS if key in composites.attrs}
        | {
            "dim": dim,
            "checkpoint": source,
            "checkpoint_sha256": file_sha256(path),
            "clip_model": meta.clip_model if meta else "ViT-B-32",
            "clip_pretrained": meta.clip_pretrained if meta else "openai",
        },
    )
    out[EMBEDDINGS].attrs = {"long_name": "TimeSenCLIP pixel embedding"}
    if "valid_months" in composites:
        out["valid_months"] = composites["valid_months"]
    return out.rio.write_crs(composite.rio.crs).rio.write_transform(composite.rio.transform())


def _composite(composites: xr.Dataset) -> xr.DataArray:
    composite = composites.get("composite") if isinstance(composites, xr.Dataset) else None
    if composite is None or composite.dims != ("month", "band", "y", "x"):
        raise TimeSenCLIPError(
            "embed needs the Dataset monthly_composites returns, with composite (month, band, "
            f"y, x); got {type(composites).__name__} "
            f"{getattr(composite, 'dims', list(getattr(composites, 'data_vars', [])))}."
        )
    if [str(b) for b in composite["band"].values] != list(BANDS):
        raise TimeSenCLIPError(
            f"the composites' bands are {list(map(str, composite['band'].values))}, not "
            f"{list(BANDS)}: pass the Dataset monthly_composites returns."
        )
    if composite.rio.crs is None:
        raise TimeSenCLIPError(
            "the composites have no CRS: pass the Dataset monthly_composites returns (rioxarray "
            "writes its CRS and transform)."
        )
    return composite


def _embed_block(
    block: np.ndarray, *, source: str, device: str, runtime: str, precision: str, batch_size: int
) -> np.ndarray:
    """``(h, w, D)`` embeddings of one chunk's ``(T, 10, h, w)`` composites."""
    model = cached_encoder(source, device)
    series, present = pixel_series(block, model.conventions)
    embeddings = embed_series(
        model, series, present, batch_size=batch_size, runtime=runtime, precision=precision
    )
    return embeddings.reshape(*block.shape[2:], -1)


def open_embeddings(store: str | Path, zone: str | None = None) -> xr.Dataset:
    """A store a run kept (``outputs.embeddings``) as a lazy Dataset: ``embeddings (y, x, dim)``.

    The Dataset covers the region's grid (the run's maps), decoded to float32 as the store's
    verbs decode it (NaN where a pixel has no embedding), with its CRS and transform (rioxarray)
    and the store's attributes (year, checkpoint, CLIP text model, COG layout), and the run's
    ``valid_months`` when its map is beside the store. ``zone`` names the UTM zone
    (``"EPSG32631"``) of a store that holds several. Stores of earlier versions (one bare array
    per zone) open too. ``xr.open_zarr(store, group=zone)`` opens a store of this version
    directly: the zone's whole array, int8 decoded by its CF attributes.
    """
    kept = open_store(store)
    names = {f"EPSG{z.epsg}": z for z in kept.zones}
    if zone is None and len(names) == 1:
        return zone_dataset(kept, kept.zones[0])
    if zone not in names:
        raise TimeSenCLIPError(
            f"{kept.path} holds the zones {', '.join(names)}: pass zone= one of them."
        )
    return zone_dataset(kept, names[zone])
