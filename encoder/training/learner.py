"""The contrastive learner: one-way InfoNCE of pixel embeddings against a queue of ground keys.

Each pixel embedding must pick its own point's pooled ground embedding against a FIFO queue of
earlier ground embeddings, not the batch's other keys (MoCo-style; the key side is frozen, so there
is no momentum encoder; the queue starts as random unit vectors). Learnable logit scale, its
parameter clamped to at most ``log(logit_scale_max)`` after each step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoder import augment
from encoder.ground import PhotoPooling
from encoder.model import TimeSenCLIPEncoder
from timesenclip.common.errors import TrainingError


class ContrastiveLearner(nn.Module):
    """Encoder + photo pooling + logit scale + FIFO queue of pooled ground embeddings.

    Attribute names follow the reference checkpoints (``pooling_layer``, ``logit_scale``,
    ``queue``, ``queue_ptr``), which encoder loaders drop.
    """

    def __init__(
        self,
        encoder: TimeSenCLIPEncoder,
        ground_dim: int,
        pooling: str = "mean",
        queue_size: int = 2048,
        logit_scale_init: float = 1 / 0.07,
        logit_scale_max: float = 100.0,
    ) -> None:
        super().__init__()
        if encoder.config.dim != ground_dim:
            raise TrainingError(
                f"the encoder is {encoder.config.dim}-d but the ground embeddings are "
                f"{ground_dim}-d: set model.dim to {ground_dim} (the CLIP embedding width)"
            )
        self.encoder = encoder
        self.pooling_layer = PhotoPooling(ground_dim, pooling)
        if queue_size < 1:
            raise TrainingError("queue_size must be at least 1: the queue holds the negatives")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.clamp_logit_scale()
        # Random unit keys (as the reference), so the queue is full from the first step.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, ground_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def scale(self) -> Tensor:
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Cap the parameter itself (after each step): clamping exp() would zero its gradient."""
        self.logit_scale.clamp_(max=math.log(self.logit_scale_max))

    def embed(
        self, x: Tensor, month_mask: Tensor, kind: str | None, generator: torch.Generator
    ) -> Tensor:
        """Satellite embeddings (N, D); ``kind`` names a temporal augmentation or None."""
        if kind is None:
            return self.encoder(x, month_mask)
        x = torch.where(month_mask[..., None], x, 0.0)  # absent months may be NaN
        tokens = self.encoder.embed_spectral(x)
        pos = self.encoder.time_pos_encoding
        single = self.encoder.conventions.single_token_position
        return self.encoder.encode_tokens(
            *augment.augment(kind, tokens, month_mask, pos, generator, single)
        )

    def loss(self, satellite: Tensor, keys: Tensor) -> Tensor:
        """InfoNCE of each satellite row: its own (unit) key at index 0 against the queue."""
        s = F.normalize(satellite, dim=-1)
        logits = torch.cat([(s * keys).sum(-1, keepdim=True), s @ self.queue.T], 1)
        target = torch.zeros(len(keys), dtype=torch.long, device=keys.device)
        return F.cross_entropy(self.scale() * logits, target)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around; only the newest ``size`` are kept."""
        size = self.queue.shape[0]
        n, ptr = len(keys), int(self.queue_ptr)
        # Same result as writing the rows one by one: the oldest of an oversize batch fall out.
        keys = keys.detach()[-size:].to(self.queue.dtype)
        start = ptr + n - len(keys)
        self.queue[(start + torch.arange(len(keys), device=self.queue.device)) % size] = keys
        self.queue_ptr.fill_((ptr + n) % size)
