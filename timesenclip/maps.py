"""Maps from embeddings: zero-shot classes, similarity to texts, and the run's styled COGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from encoder.classes import ClassSpec, resolve_classes
from encoder.prompts import TextEncoder
from pipeline.maps.classify import (
    Plan,
    SimilarityPlan,
    TaskPlan,
    plan_similarity,
    plan_task,
    publish_plan,
)
from pipeline.maps.cog import write_cog
from pipeline.maps.outputs import CONFIDENCE_SUFFIX, OUTSIDE_REGION, VALID_MONTHS
from pipeline.maps.qml import write_ramp_qml
from pipeline.maps.similarity import ScoreRamp
from pipeline.maps.style import CONFIDENCE_RAMP
from pipeline.run.worker_tasks import layer_styles
from pipeline.store.embeddings import EMBEDDINGS
from timesenclip.common.errors import TimeSenCLIPError

# Attributes of the embeddings that their maps keep (the store's COG layout among them).
_KEPT_ATTRS = ("year", "checkpoint", "checkpoint_sha256", "clip_model", "clip_pretrained", "layout")


def classify(
    embeddings: xr.Dataset | xr.DataArray,
    classes: str | Sequence[str | dict] = "land_cover",
    *,
    name: str | None = None,
    templates: str | Sequence[str] = "class_names",
    confidence: bool = True,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
) -> xr.Dataset:
    """Zero-shot classes of every pixel: the Dataset of a workflow task's class and confidence maps.

    ``classes`` is a built-in set (``land_cover``, ``land_use``, ``crop_type``, ``bioregion``,
    ``eunis_habitat``, ``country``) or a list of class names or ``{name, color, prompts}`` dicts,
    and ``templates`` a template set or list, as in a workflow's ``tasks``. The prompts are
    embedded once (cached on disk) by the CLIP text model the embeddings record (``clip_model``
    and ``clip_pretrained`` override it); each chunk is then scored as a run scores it.

    Returns ``<name>`` (uint8 class 1..K, 0 = no data) and, with ``confidence``,
    ``<name>_confidence`` (uint8 percent, 255 = no data), plus ``valid_months`` when the
    embeddings carry it; class names and colours are in ``attrs`` (``class_names``,
    ``class_colors``, CF ``flag_values``/``flag_meanings`` on the class layer). ``name``
    defaults to the set's name, else ``custom``. ``to_cog`` writes them as ``run`` does.
    """
    values = _embeddings(embeddings)
    specs = resolve_classes(classes)
    if name is None:
        name = classes.strip().lower().replace("-", "_") if isinstance(classes, str) else "custom"
    text = _text_encoder(embeddings, clip_model, clip_pretrained)
    plan = _checked(plan_task(name, specs, templates, text), values)
    names = [c.name for c in plan.classes]
    legend = {"class_names": names, "class_colors": list(plan.colors)}
    layer_attrs = {
        plan.name: {
            "long_name": f"{plan.name} class (1..{len(names)}, 0 = no data)",
            "kind": "class",
            "flag_values": list(range(1, len(names) + 1)),
            "flag_meanings": " ".join(n.replace(" ", "_") for n in names),
            **legend,
        },
        plan.confidence_layer: {
            "long_name": f"{plan.name} confidence (% probability of the top class)",
            "kind": "confidence",
            "units": "percent",
        },
    }
    return _scored(embeddings, values, plan, confidence, layer_attrs, {"task": name, **legend})


def similarity(
    embeddings: xr.Dataset | xr.DataArray,
    texts: str | Sequence[str],
    *,
    name: str = "similarity",
    templates: str | Sequence[str] = "class_names",
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
) -> xr.Dataset:
    """Cosine similarity of every pixel to each text, as a ``mode: similarity`` task maps it.

    One uint8 layer ``<name>_<slug of the text>`` per text on the fixed ramp: pixel ``p`` in
    0..200 is the cosine ``p / 100 - 1``, 255 = no data; the layers' CF ``scale_factor``,
    ``add_offset`` and ``_FillValue`` say so, so ``xr.decode_cf(result)`` gives the cosines.
    Each text is embedded with every template of ``templates`` and ensembled, by the CLIP text
    model the embeddings record (or ``clip_model``). ``to_cog`` writes them as ``run`` does.
    """
    values = _embeddings(embeddings)
    texts = [texts] if isinstance(texts, str) else list(texts)
    text = _text_encoder(embeddings, clip_model, clip_pretrained)
    plan = _checked(plan_similarity(name, texts, templates, text), values)
    ramp = ScoreRamp.similarity()
    layer_attrs = {
        layer: {
            "long_name": f"cosine similarity to {text!r}",
            "kind": "similarity",
            "text": text,
            "units": ramp.units,
            "scale_factor": ramp.scale,
            "add_offset": ramp.low,
        }
        for layer, text in zip(plan.layer_names(), plan.texts, strict=True)
    }
    return _scored(embeddings, values, plan, False, layer_attrs, {"task": name, "texts": texts})


def _embeddings(embeddings: xr.Dataset | xr.DataArray) -> xr.DataArray:
    values = embeddings.get(EMBEDDINGS) if isinstance(embeddings, xr.Dataset) else embeddings
    if not isinstance(values, xr.DataArray) or values.dims != ("y", "x", "dim"):
        raise TimeSenCLIPError(
            "pass the embeddings (y, x, dim) that embed or open_embeddings returns, not "
            f"{type(embeddings).__name__} {getattr(values, 'dims', '')}."
        )
    return values


def _text_encoder(
    embeddings: xr.Dataset | xr.DataArray, model: str | None, pretrained: str | None
) -> TextEncoder:
    """The CLIP text tower the embeddings record, unless another one is given."""
    if model is not None:
        return TextEncoder(model, pretrained)
    attrs = embeddings.attrs
    return TextEncoder(attrs.get("clip_model", "ViT-B-32"), attrs.get("clip_pretrained", "openai"))


def _checked(plan: Plan, values: xr.DataArray) -> Plan:
    if plan.weights.shape[1] != values.sizes["dim"]:
        raise TimeSenCLIPError(
            f"the CLIP text model gives {plan.weights.shape[1]}-d embeddings but the pixels are "
            f"{values.sizes['dim']}-d: pass clip_model= (and clip_pretrained=) the model the "
            "encoder was trained against."
        )
    return plan


def _scored(
    source: xr.Dataset | xr.DataArray,
    values: xr.DataArray,
    plan: Plan,
    confidence: bool,
    layer_attrs: dict[str, dict],
    attrs: dict[str, Any],
) -> xr.Dataset:
    """A plan's layers of every chunk of ``values``, lazily, as a Dataset on their grid."""
    data = values.data.rechunk({2: -1})
    nodata = plan.layers(confidence)
    stacked = da.map_blocks(
        _score_block,
        data,
        plan=plan,
        confidence=confidence,
        drop_axis=2,
        new_axis=0,
        chunks=((len(nodata),), *data.chunks[:2]),
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), np.uint8),
    )
    kept = source.attrs if isinstance(source, xr.Dataset) else values.attrs
    out = xr.Dataset(
        {name: (("y", "x"), stacked[i]) for i, name in enumerate(nodata)},
        coords={"y": values["y"], "x": values["x"]},
        attrs={key: kept[key] for key in _KEPT_ATTRS if key in kept} | attrs,
    )
    year = {"year": out.attrs["year"]} if "year" in out.attrs else {}
    for name, fill in nodata.items():
        out[name].attrs = {**layer_attrs[name], "task": plan.name, **year, "_FillValue": fill}
    if isinstance(source, xr.Dataset) and VALID_MONTHS in source:
        out[VALID_MONTHS] = source[VALID_MONTHS]
    return out.rio.write_crs(values.rio.crs).rio.write_transform(values.rio.transform())


def _score_block(block: np.ndarray, *, plan: Plan, confidence: bool) -> np.ndarray:
    """``(layers, h, w)`` uint8 of one chunk's ``(h, w, D)`` embeddings (``Plan.score``)."""
    height, width, dim = block.shape
    layers = plan.score(np.asarray(block, np.float32).reshape(-1, dim), confidence)
    return np.stack([layers[name].reshape(height, width) for name in plan.layers(confidence)])


def to_cog(
    maps: xr.Dataset | xr.DataArray,
    path: str | Path,
    *,
    year: int | None = None,
    blocksize: int | None = None,
    overview_resampling: str | None = None,
) -> list[Path]:
    """Write maps as ``run`` writes them: styled COGs, ``.qml``, ``.aux.xml`` and STAC Items.

    ``maps`` is one layer of what ``classify`` or ``similarity`` return, written to ``path``, or
    the whole Dataset, each layer written into the folder ``path`` under its own name
    (``land_cover.tif``, ``land_cover_confidence.tif``, ``valid_months.tif``), the class map's
    STAC Item then listing its confidence and valid months as a run's does. ``year`` (for the
    Items), ``blocksize`` and ``overview_resampling`` (of class maps: ``mode`` or ``nearest``)
    default to what the maps record (a kept store records the run's), else the year and
    512 px and ``mode``. The maps are computed here. Returns the files written.
    """
    if isinstance(maps, xr.DataArray):
        layers, paths = {maps.name: maps}, {maps.name: Path(path)}
    else:
        layers = {str(name): maps[name] for name in maps.data_vars}
        paths = {name: Path(path) / f"{name}.tif" for name in layers}
    plans = _plans(layers)
    layout = maps.attrs.get("layout", {})
    year = year if year is not None else maps.attrs.get("year")
    if year is None:
        raise TimeSenCLIPError("the maps record no year: pass year= the year they show.")
    blocksize = blocksize or layout.get("blocksize", 512)
    resampling = overview_resampling or layout.get("overview_resampling", "mode")
    # All layers at once: those of one task share the embeddings they are computed from.
    layers = dict(zip(layers, dask.compute(*layers.values()), strict=True))
    for target in {p.parent for p in paths.values()}:
        target.mkdir(parents=True, exist_ok=True)
    first = next(iter(layers.values()))
    grid = {"transform": first.rio.transform(), "crs": first.rio.crs}

    def write(name: str, nodata: int, **style) -> Path:
        array = np.asarray(layers[name].values)
        return write_cog(paths[name], array, nodata=nodata, blocksize=blocksize, **grid, **style)

    written = []
    valid_months = None
    if VALID_MONTHS in layers:
        style = layer_styles([], False, resampling)[VALID_MONTHS]
        valid_months = write(VALID_MONTHS, OUTSIDE_REGION, **style)
        written.append(valid_months)
    for plan, confidence in plans:
        nodata = plan.layers(confidence)
        if not set(nodata) <= set(layers):  # a confidence layer on its own
            (name,) = set(nodata) & set(layers)
            written += [
                write(name, nodata[name], **plan.style(name, resampling)),
                write_ramp_qml(paths[name].with_suffix(".qml"), CONFIDENCE_RAMP),
            ]
            continue
        written += publish_plan(
            plan,
            lambda name, nodata=nodata, **style: write(name, nodata[name], **style),
            year=int(year),
            confidence=confidence,
            class_resampling=resampling,
            valid_months_path=valid_months,
        )
    sidecars = [p.with_name(f"{p.name}.aux.xml") for p in written if p.suffix == ".tif"]
    return list(dict.fromkeys(written + [p for p in sidecars if p.is_file()]))


def _plans(layers: dict[str, xr.DataArray]) -> list[tuple[Plan, bool]]:
    """The plans whose styles and Items the layers take, rebuilt from the layers' attributes,
    each with whether its confidence layer is among them."""
    plans: list[tuple[Plan, bool]] = []
    tasks: dict[str, dict[str, xr.DataArray]] = {}
    for name, layer in layers.items():
        if name == VALID_MONTHS:
            continue
        if layer.attrs.get("kind") not in ("class", "confidence", "similarity"):
            raise TimeSenCLIPError(
                f"layer {name!r} is not one classify or similarity made (its attrs say no kind): "
                "to_cog writes their layers, whose attrs say how each is styled."
            )
        tasks.setdefault(layer.attrs["task"], {})[name] = layer
    for task, members in tasks.items():
        kinds = {layer.attrs["kind"]: layer for layer in members.values()}
        if "similarity" in kinds:
            slugs = tuple(name.removeprefix(f"{task}_") for name in members)
            texts = tuple(layer.attrs["text"] for layer in members.values())
            plans.append((SimilarityPlan(task, texts, slugs, (), _NO_WEIGHTS), False))
            continue
        classes = kinds["class"].attrs if "class" in kinds else {"class_names": []}
        specs = tuple(ClassSpec(n) for n in classes["class_names"])
        colors = tuple(classes.get("class_colors", ()))
        plan = TaskPlan(task, specs, colors, (), _NO_WEIGHTS)
        plans.append((plan, f"{task}{CONFIDENCE_SUFFIX}" in members))
    return plans


_NO_WEIGHTS = np.empty((0, 0), np.float32)  # styles and Items need no text embeddings
