"""Reproducible steps: seeds derived from (seed, step, stream), the data order of an epoch and the
learning-rate factor (per-step linear warm-up, then cosine).

The data order is a function of (seed, epoch) and every step reseeds dropout and augmentation from
(seed, step), so a resumed run repeats an uninterrupted one exactly without carrying RNG states.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, step, stream...), stable across platforms."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of ``epoch``: a permutation that depends only on (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch, 0)))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
