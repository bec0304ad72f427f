"""The pairs a run trains and validates on, as model-ready tensors on its device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from encoder.conventions import Conventions
from encoder.pairs import Pairs
from encoder.pairs_store import read_pairs
from encoder.preprocess import normalize
from encoder.training.config import DataConfig

log = logging.getLogger(__name__)


@dataclass
class TensorPairs:
    """Model-ready tensors of a pairs set on one device."""

    x: Tensor  # (N, 12, 10) normalised (bands in the conventions' order), NaN where absent
    month_mask: Tensor  # (N, 12) bool
    ground: Tensor  # (N, P, D)
    photo_mask: Tensor  # (N, P) bool
    labels: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_pairs(
        cls, pairs: Pairs, device: torch.device, conventions: Conventions | None = None
    ) -> TensorPairs:
        def t(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(
            t(normalize(pairs.series.astype(np.float32), conventions=conventions)),
            t(pairs.month_mask),
            t(pairs.ground.astype(np.float32)),
            t(pairs.photo_mask),
            {k: t(v.astype(np.int64)) for k, v in pairs.labels.items()},
        )

    def __len__(self) -> int:
        return len(self.x)


def training_pairs(data: DataConfig, seed: int) -> tuple[Pairs, Pairs | None]:
    """The training pairs and the validation pairs (None without validation) of ``data``."""
    pairs = _usable(read_pairs(data.train), data.train, need_photos=True)
    if data.val is not None:
        return pairs, _usable(read_pairs(data.val), data.val, need_photos=False)
    return _split(pairs, data.val_fraction, seed)


def _usable(pairs: Pairs, source: Path, need_photos: bool) -> Pairs:
    """The points with a valid month (else a NaN embedding) and, with ``need_photos``, a photo
    (else no positive); logs how many were left out."""
    has_month = pairs.month_mask.any(1)
    has_photo = pairs.photo_mask.any(1) | (not need_photos)
    keep = has_month & has_photo
    if not keep.all():
        log.info(
            "%s: left out %d of %d points (%d without a valid month, %d more without a photo)",
            source,
            int((~keep).sum()),
            len(pairs),
            int((~has_month).sum()),
            int((has_month & ~has_photo).sum()),
        )
    return pairs.subset(keep)


def _split(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs | None]:
    if fraction <= 0:
        return pairs, None
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(fraction * len(pairs)))
    return pairs.subset(np.sort(order[n_val:])), pairs.subset(np.sort(order[:n_val]))
