"""Zero-shot scoring: cosine similarity between pixel embeddings and class text embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.functional import normalize

from timesenclip.common.errors import TimeSenCLIPError


@dataclass
class ZeroShotResult:
    """Per-pixel outcome; invalid (NaN) pixels have label -1 and NaN scores."""

    label: torch.Tensor  # (N,) int64
    confidence: torch.Tensor  # (N,) float32, softmax probability of the top class
    top_k_labels: torch.Tensor  # (N, k) int64, best first
    top_k_scores: torch.Tensor  # (N, k) float32 softmax probabilities, best first


def _as_tensor(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 2:
        raise TimeSenCLIPError(
            f"{what} must be a 2-D (rows, dim) array, got shape {tuple(t.shape)}"
        )
    return t


def _check_widths(emb: torch.Tensor, weights: torch.Tensor) -> None:
    if emb.shape[1] != weights.shape[1]:
        raise TimeSenCLIPError(
            f"embedding width {emb.shape[1]} differs from class weight width {weights.shape[1]}: "
            "use class embeddings from the CLIP model the encoder was trained against"
        )


def cosine_logits(
    embeddings: torch.Tensor | np.ndarray, class_weights: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """(N, K) cosine similarities; both sides are L2-normalised, NaN rows stay NaN."""
    emb = _as_tensor(embeddings, "embeddings").float()
    weights = _as_tensor(class_weights, "class_weights").to(emb.device, torch.float32)
    _check_widths(emb, weights)
    return normalize(emb, dim=-1) @ normalize(weights, dim=-1).T


def score(
    embeddings: torch.Tensor | np.ndarray,
    class_weights: torch.Tensor | np.ndarray,
    top_k: int = 1,
    batch_size: int = 65536,
    logit_scale: float = 100.0,
    device: str | torch.device | None = None,
) -> ZeroShotResult:
    """Top class, confidence (softmax of cosine x logit_scale) and top-k per row, in batches.

    Runs on ``device`` (default: the device of ``embeddings``), returns CPU tensors.
    """
    emb = _as_tensor(embeddings, "embeddings")
    weights = _as_tensor(class_weights, "class_weights")
    _check_widths(emb, weights)
    n, k_classes = emb.shape[0], weights.shape[0]
    if not 1 <= top_k <= k_classes:
        raise TimeSenCLIPError(f"top_k={top_k} must be between 1 and the {k_classes} classes")
    if batch_size < 1:
        raise TimeSenCLIPError(f"batch_size={batch_size} must be at least 1")
    dev = torch.device(device) if device is not None else emb.device
    weights = weights.to(dev)
    labels = torch.full((n, top_k), -1, dtype=torch.int64)
    scores = torch.full((n, top_k), float("nan"), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = emb[start : start + batch_size].to(dev)
            valid = ~batch.isnan().any(dim=1)
            if not valid.any():
                continue
            probs = (cosine_logits(batch[valid], weights) * logit_scale).softmax(dim=-1)
            top = probs.topk(top_k, dim=-1)
            rows = torch.arange(start, start + len(batch))[valid.cpu()]
            labels[rows] = top.indices.cpu()
            scores[rows] = top.values.cpu()
    return ZeroShotResult(labels[:, 0].clone(), scores[:, 0].clone(), labels, scores)
