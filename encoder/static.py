"""The fast inference path with every branch fixed, for export to other runtimes.

``TimeSenCLIPEncoder.forward`` skips work when no month is missing (``.any()`` on the mask):
a trace would bake that branch in for whatever input it saw. Here the month mask is always
applied, so one exported graph is right for every mask. The numbers are those of the fast path
(same weights, same folds), up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoder.model import (
    TimeSenCLIPEncoder,
    eval_layers,
    position_rows,
)


class StaticEncoder(nn.Module):
    """``model(x, present)`` for flat ``x`` (N, T, bands*k*k) and a bool ``present`` (N, T),
    for ``tokens`` = T time steps: their position rows are worked out here, once. ``precision``
    as in ``TimeSenCLIPEncoder.forward``."""

    def __init__(self, model: TimeSenCLIPEncoder, tokens: int, precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        with torch.no_grad():
            rows, lone = position_rows(
                model.time_pos_encoding, tokens, model.conventions.single_token_position
            )
            attn = model.transformer.layers[0].self_attn
            bias = model.spectral_embedding[1].bias
            projected = [
                F.linear(p + bias, attn.in_proj_weight, attn.in_proj_bias) for p in (rows, lone)
            ]
        self.register_buffer("rows", rows.clone())
        self.register_buffer("lone", lone.clone())
        self.register_buffer("qkv_rows", projected[0])
        self.register_buffer("qkv_lone", projected[1])

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        m = self.model
        lin = m.spectral_embedding[1]
        attn = m.transformer.layers[0].self_attn
        w, b = attn.in_proj_weight, attn.in_proj_bias
        x = torch.where(present[..., None], x, 0.0)
        alone = (present.sum(1) == 1)[:, None, None]  # a lone month sits at the lone position
        cls = m.time_token.expand(x.shape[0], -1, -1)
        seq = torch.cat([cls, lin(x) + torch.where(alone, self.lone, self.rows)], 1)
        # First-layer q/k/v straight from the input, as TimeSenCLIPEncoder._first_qkv.
        tokens = F.linear(x, w @ lin.weight) + torch.where(alone, self.qkv_lone, self.qkv_rows)
        qkv = torch.cat([F.linear(cls, w, b), tokens], 1)
        key_mask = F.pad(~present, (1, 0), value=False)
        cls = eval_layers(m.transformer.layers, seq, key_mask, qkv, self.precision)
        out = m.mlp_head(cls)
        return out.masked_fill(~present.any(1)[:, None], float("nan"))
