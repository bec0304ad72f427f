"""Zero-shot classification of pixel embeddings into the classes of each mapping task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from encoder.prompts import ClassSpec, TextEncoder, class_prompts, template_set
from encoder.zeroshot import score
from pipeline.cog import CLASS_NODATA, confidence_percent
from pipeline.style import class_colors


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


def plan_task(
    name: str,
    classes: Sequence[ClassSpec],
    templates: str | Sequence[str],
    text_encoder: TextEncoder,
) -> TaskPlan:
    """Encode the prompts of one task once (the text encoder caches them on disk)."""
    if len(classes) > 254:
        from encoder.errors import TimeSenCLIPError

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


def classify(embeddings: np.ndarray, task: TaskPlan) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(P, D)`` embeddings to uint8 class values (1..K, 0 nodata) and confidence in percent.

    Confidence is the softmax probability of the top class (cosine x 100) in whole percent,
    ``CONFIDENCE_NODATA`` where a pixel has no valid embedding.
    """
    result = score(embeddings, task.weights)
    label = result.label.numpy()
    values = np.where(label >= 0, label + 1, CLASS_NODATA).astype(np.uint8)
    return values, confidence_percent(result.confidence.numpy())
