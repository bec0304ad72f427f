"""Scoring plans for the mapping tasks: zero-shot classes (``TaskPlan``) or similarity maps.

Both plan types share one interface, so a chunk worker and the final writer handle any task the
same way: ``layers(confidence)`` names the uint8 rasters a task yields with their nodata values,
``score(embeddings, confidence)`` computes them for ``(P, D)`` embeddings, ``style(name, ...)``
gives the COG keywords of a final layer, ``describe(paths, ...)`` writes its styles and STAC Items
and ``record()`` is what provenance and fingerprints keep. ``scorer(confidence, device)`` is
``score`` as torch on the device the encoder runs on (``encoder.inference.embed_scores``), so a
GPU hands back only the uint8 layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import normalize

from encoder.inference import Scorer
from encoder.prompts import ClassSpec, TextEncoder, class_prompts, template_set
from encoder.zeroshot import score
from pipeline.maps.cog import confidence_percent
from pipeline.maps.outputs import CLASS_NODATA, CONFIDENCE_NODATA, confidence_layer
from pipeline.maps.sidecars import describe_map, describe_ramp, map_style
from pipeline.maps.similarity import RAMP_NODATA, RAMP_STEPS, ScoreRamp, cosine, unique_slugs
from pipeline.maps.style import class_colors
from timesenclip.common.errors import TimeSenCLIPError


@dataclass(frozen=True)
class TaskPlan:
    """Everything a worker needs to classify embeddings for one task: small and picklable."""

    name: str
    classes: tuple[ClassSpec, ...]
    colors: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    weights: np.ndarray  # (K, D) unit-norm class embeddings

    def legend(self) -> list[tuple[int, str, str]]:
        """``(value, name, colour)`` per class; raster values are 1..K, 0 is nodata."""
        return [
            (i + 1, c.name, col)
            for i, (c, col) in enumerate(zip(self.classes, self.colors, strict=True))
        ]

    @property
    def confidence_layer(self) -> str:
        return confidence_layer(self.name)

    def layers(self, confidence: bool) -> dict[str, int]:
        """The class map and, with ``confidence``, its confidence map, with nodata values."""
        layers = {self.name: CLASS_NODATA}
        if confidence:
            layers[self.confidence_layer] = CONFIDENCE_NODATA
        return layers

    def score(self, embeddings: np.ndarray, confidence: bool) -> dict[str, np.ndarray]:
        """``layers(confidence)`` computed for ``(P, D)`` embeddings, each ``(P,)`` uint8."""
        values, percent = classify(embeddings, self)
        layers = {self.name: values}
        if confidence:
            layers[self.confidence_layer] = percent
        return layers

    def scorer(self, confidence: bool, device: torch.device) -> Scorer:
        """``score`` in torch on ``device``: top class of softmax(100 x cosine), as ``classify``."""
        weights = _unit_weights(self.weights, device)

        def scores(embeddings: Tensor) -> dict[str, Tensor]:
            valid = ~embeddings.isnan().any(1)
            probs = (_cosines(embeddings, weights) * 100.0).softmax(-1)
            top, label = probs.max(-1)
            layers = {self.name: torch.where(valid, label + 1, CLASS_NODATA).to(torch.uint8)}
            if confidence:
                percent = torch.where(valid, (top.clamp(0, 1) * 100).round(), CONFIDENCE_NODATA)
                layers[self.confidence_layer] = percent.to(torch.uint8)
            return layers

        return scores

    def style(self, name: str, class_resampling: str) -> dict:
        """COG keywords of a final layer; class maps overview with ``class_resampling``."""
        if name == self.confidence_layer:
            return {
                "overview_resampling": "average",
                "description": f"{self.name} confidence (% probability of the top class)",
            }
        return {"overview_resampling": class_resampling, **map_style(self)}

    def describe(
        self, paths: Mapping[str, Path], *, year: int, valid_months_path: Path | None = None
    ) -> list[Path]:
        """The class map's QGIS style and STAC Item (linking its confidence and valid months)."""
        return describe_map(
            paths[self.name],
            self,
            year=year,
            confidence_path=paths.get(self.confidence_layer),
            valid_months_path=valid_months_path,
        )

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": [c.name for c in self.classes],
            "colors": list(self.colors),
            "prompts": [list(p) for p in self.prompts],
        }


@dataclass(frozen=True)
class SimilarityPlan:
    """A ``mode: similarity`` task: one cosine-similarity map per text, on the fixed -1..1 ramp."""

    name: str
    texts: tuple[str, ...]
    slugs: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    weights: np.ndarray  # (T, D) unit-norm text embeddings, ensembled over the templates

    def layer_names(self) -> list[str]:
        return [f"{self.name}_{slug}" for slug in self.slugs]

    def layers(self, confidence: bool) -> dict[str, int]:
        """One uint8 similarity map per text (``confidence`` does not apply)."""
        return dict.fromkeys(self.layer_names(), RAMP_NODATA)

    def score(self, embeddings: np.ndarray, confidence: bool) -> dict[str, np.ndarray]:
        cosines = cosine(embeddings, self.weights)
        ramp = ScoreRamp.similarity()
        return {name: ramp.encode(cosines[:, i]) for i, name in enumerate(self.layer_names())}

    def scorer(self, confidence: bool, device: torch.device) -> Scorer:
        """``score`` in torch on ``device``: each cosine on the similarity ramp."""
        weights = _unit_weights(self.weights, device)
        ramp = ScoreRamp.similarity()

        def scores(embeddings: Tensor) -> dict[str, Tensor]:
            cosines = _cosines(embeddings, weights)
            steps = ((cosines - ramp.low) / ramp.scale).clamp(0, RAMP_STEPS).round()
            pixels = torch.where(cosines.isfinite(), steps, RAMP_NODATA).to(torch.uint8)
            return {name: pixels[:, i] for i, name in enumerate(self.layer_names())}

        return scores

    def text_of(self, name: str) -> str:
        return self.texts[self.layer_names().index(name)]

    def style(self, name: str, class_resampling: str) -> dict:
        return ScoreRamp.similarity().cog_style(f"cosine similarity to {self.text_of(name)!r}")

    def describe(
        self, paths: Mapping[str, Path], *, year: int, valid_months_path: Path | None = None
    ) -> list[Path]:
        """Per text: its colour-ramp QGIS style and STAC Item."""
        outputs = []
        for name in self.layer_names():
            text = self.text_of(name)
            outputs += describe_ramp(
                paths[name],
                ScoreRamp.similarity(),
                title=f"{text!r} similarity {year}",
                years=(year, year),
                valid_months_path=valid_months_path,
                properties={"timesenclip:text": text, "timesenclip:task": self.name},
            )
        return outputs

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": "similarity",
            "texts": list(self.texts),
            "layers": self.layer_names(),
            "prompts": [list(p) for p in self.prompts],
        }


Plan = TaskPlan | SimilarityPlan


def publish_plan(
    plan: Plan,
    write: Callable[..., Path],
    *,
    year: int,
    confidence: bool,
    class_resampling: str,
    valid_months_path: Path | None = None,
) -> list[Path]:
    """Write a task's final layers with ``write(name, **cog_keywords)``, then their styles and
    Items: the same for a ``run`` (mosaics of its tiles) and for a kept store. The writer knows
    each layer's nodata from ``plan.layers``."""
    paths = {
        name: write(name, **plan.style(name, class_resampling)) for name in plan.layers(confidence)
    }
    described = plan.describe(paths, year=year, valid_months_path=valid_months_path)
    return [*paths.values(), *described]


def _unit_weights(weights: np.ndarray, device: torch.device) -> Tensor:
    return normalize(torch.from_numpy(np.asarray(weights, np.float32)).to(device), dim=-1)


def _cosines(embeddings: Tensor, unit_weights: Tensor) -> Tensor:
    """``(P, K)`` cosines; NaN rows stay NaN."""
    return normalize(embeddings, dim=-1) @ unit_weights.T


def plan_task(
    name: str,
    classes: Sequence[ClassSpec],
    templates: str | Sequence[str],
    text_encoder: TextEncoder,
) -> TaskPlan:
    """Encode the prompts of one task once (the text encoder caches them on disk)."""
    if len(classes) > 254:
        raise TimeSenCLIPError(
            f"task {name!r} has {len(classes)} classes; a uint8 map holds at most 254 "
            "(0 is nodata, 255 is reserved): split the class list into several tasks."
        )
    prompts = class_prompts(classes, template_set(templates))
    weights = text_encoder.embed_prompts(prompts).float().cpu().numpy()
    return TaskPlan(
        name=name,
        classes=tuple(classes),
        colors=tuple(class_colors(classes)),
        prompts=tuple(tuple(p) for p in prompts),
        weights=weights,
    )


def plan_similarity(
    name: str,
    texts: Sequence[str],
    templates: str | Sequence[str],
    text_encoder: TextEncoder,
) -> SimilarityPlan:
    """Encode each text with every template, ensembled like a class's prompts."""
    texts = tuple(t.strip() for t in texts)
    slugs = unique_slugs(texts)
    prompts = class_prompts(list(texts), template_set(templates))
    weights = text_encoder.embed_prompts(prompts).float().cpu().numpy()
    return SimilarityPlan(name, texts, slugs, tuple(tuple(p) for p in prompts), weights)


def plan_workflow_task(task: Any, text_encoder: TextEncoder) -> Plan:
    """The plan of a workflow ``TaskConfig``, by its ``mode``."""
    if task.mode == "similarity":
        return plan_similarity(task.name, task.texts, task.templates, text_encoder)
    return plan_task(task.name, task.class_specs(), task.templates, text_encoder)


def classify(embeddings: np.ndarray, task: TaskPlan) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(P, D)`` embeddings to uint8 class values (1..K, 0 nodata) and confidence in percent.

    Confidence is the softmax probability of the top class (cosine x 100) in whole percent,
    ``CONFIDENCE_NODATA`` where a pixel has no valid embedding.
    """
    result = score(embeddings, task.weights)
    label = result.label.numpy()
    values = np.where(label >= 0, label + 1, CLASS_NODATA).astype(np.uint8)
    return values, confidence_percent(result.confidence.numpy())
