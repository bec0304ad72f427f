"""The TimeSenCLIP pixel encoder, with the published state_dict layout and a fast inference path."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoder.conventions import Conventions
from timesenclip.common.errors import TimeSenCLIPError

SEASONS = 4  # seasonal input: one token per block of 3 consecutive months
PRECISIONS = ("fp32", "bf16")  # of inference (eval_layers)


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters; the defaults are the published single-pixel model."""

    dim: int = 512
    depth: int = 6
    heads: int = 8
    ff_dim: int = 256
    dropout: float = 0.2
    months: int = 12
    bands: int = 10
    patch: int = 1


class TimeSenCLIPEncoder(nn.Module):
    """Transformer over monthly Sentinel-2 tokens; the CLS (``time_token``) output is the embedding.

    Attribute names match the published checkpoints, so its ``state_dict`` loads them unchanged.
    """

    def __init__(self, **config: int | float) -> None:
        super().__init__()
        cfg = EncoderConfig(**config)
        if cfg.dim % cfg.heads:
            raise TimeSenCLIPError(f"dim={cfg.dim} is not divisible by heads={cfg.heads}.")
        self.config = cfg
        self.metadata = None  # an EncoderMetadata when the model came from load_encoder
        self.conventions = Conventions()  # the input conventions in use (set by load_encoder)
        self.spectral_embedding = nn.Sequential(
            nn.Flatten(start_dim=2),  # (n, t, c[, h, w]) -> (n, t, c*h*w), no weights
            nn.Linear(cfg.bands * cfg.patch**2, cfg.dim),
        )
        self.time_pos_encoding = nn.Parameter(torch.zeros(1, cfg.months, cfg.dim))
        self.time_token = nn.Parameter(torch.randn(1, 1, cfg.dim))
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.mlp_head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.dim))

    def forward(
        self, x: Tensor, month_mask: Tensor | None = None, precision: str = "fp32"
    ) -> Tensor:
        """Embed normalised pixel series ``x`` (N, T, bands[, k, k]) into (N, dim).

        T is 12 months, 4 seasons (each season's token at the median of its 3 months' position
        rows, as the reference) or 1 (an annual median). ``month_mask`` (N, T), True = present;
        when None, a token is present where all its values are finite (so NaN months of a cube drop
        out by themselves). Absent tokens are left out of attention and their values never matter;
        present ones keep their own positions; a lone token (T = 1, or one present) sits at the
        position ``self.conventions.single_token_position`` names (the mean of all positions by
        default, as in training); a pixel with nothing present gets a NaN row. ``precision``
        "bf16" runs every layer but the last in bf16 (:func:`eval_layers`; eval mode only).
        """
        present = self._check_input(x, month_mask)
        x = torch.where(present.view(*present.shape, *[1] * (x.ndim - 2)), x, 0.0).flatten(2)
        single = self.conventions.single_token_position
        tokens = self.embed_spectral(x) + positions(self.time_pos_encoding, present, single)
        qkv = None if self.training else self._first_qkv(x, present)
        return self._encode(tokens, ~present, qkv, precision)

    def embed_spectral(self, x: Tensor) -> Tensor:
        """Spectral embedding only, (N, T, bands[, k, k]) -> (N, T, dim), without positions."""
        return self.spectral_embedding(x)

    def encode_tokens(
        self, tokens: Tensor, padding_mask: Tensor | None = None, precision: str = "fp32"
    ) -> Tensor:
        """Run the transformer over tokens that already carry positions; return mlp_head(CLS).

        ``padding_mask`` (N, T), True = leave the token out (PyTorch's key-padding convention). A
        row with every token left out gets NaN. Eval mode takes the fast path, train mode the plain
        ``self.transformer`` (dropout active); ``precision`` as in ``forward``.
        """
        return self._encode(tokens, padding_mask, None, precision)

    def _encode(
        self, tokens: Tensor, padding_mask: Tensor | None, qkv: Tensor | None, precision: str
    ) -> Tensor:
        seq = torch.cat([self.time_token.expand(tokens.shape[0], -1, -1), tokens], 1)
        key_mask = empty = None
        if padding_mask is not None and padding_mask.any():
            empty = padding_mask.all(1)
            # The CLS token is never padded, so rows with no token left stay finite until masked.
            key_mask = F.pad(padding_mask, (1, 0), value=False)
        if self.training:
            cls = self.transformer(seq, src_key_padding_mask=key_mask)[:, 0]
        else:
            cls = eval_layers(self.transformer.layers, seq, key_mask, qkv, precision)
        out = self.mlp_head(cls)
        return out if empty is None else out.masked_fill(empty[:, None], float("nan"))

    def _first_qkv(self, x: Tensor, present: Tensor) -> Tensor:
        """First-layer q/k/v straight from the flat input: the spectral embedding is linear, so
        ``W_in (W_e x + b_e + pos) + b_in`` folds into one small (3*dim, bands*k*k) matrix."""
        lin = self.spectral_embedding[1]
        attn = self.transformer.layers[0].self_attn
        w, b = attn.in_proj_weight, attn.in_proj_bias
        # Project the position rows, not the table: the seasonal median does not commute with W_in.
        rows, lone = position_rows(
            self.time_pos_encoding, x.shape[1], self.conventions.single_token_position
        )
        rows, lone = (F.linear(p + lin.bias, w, b) for p in (rows, lone))
        tokens = F.linear(x, w @ lin.weight) + place_positions(rows, lone, present)
        cls = F.linear(self.time_token, w, b).expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], 1)

    def _check_input(self, x: Tensor, month_mask: Tensor | None) -> Tensor:
        """Validate shapes and return the (N, T) bool mask of present months."""
        cfg = self.config
        tail = (cfg.bands,) if cfg.patch == 1 and x.ndim == 3 else (cfg.bands, cfg.patch, cfg.patch)
        steps = (cfg.months, SEASONS, 1) if cfg.months % SEASONS == 0 else (cfg.months, 1)
        if x.ndim not in (3, 5) or x.shape[1] not in steps or x.shape[2:] != tail:
            told = ", ".join(map(str, steps[:-1])) + f" or {steps[-1]}"
            raise TimeSenCLIPError(
                f"encoder input must be (N, {told}, {', '.join(map(str, tail))}) "
                f"normalised values, got shape {tuple(x.shape)}."
            )
        if month_mask is None:
            return torch.isfinite(x).flatten(2).all(-1)
        if month_mask.shape != x.shape[:2] or month_mask.dtype != torch.bool:
            raise TimeSenCLIPError(
                f"month_mask must be a bool tensor of shape {tuple(x.shape[:2])}, "
                f"got {month_mask.dtype} {tuple(month_mask.shape)}."
            )
        return month_mask

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.config).items())


def position_rows(table: Tensor, tokens: int, single: str = "mean") -> tuple[Tensor, Tensor]:
    """The (1, tokens, E) positions of a sequence of ``tokens`` and the (1, 1, E) position of a
    lone token, from the (1, months, E) table.

    All months: the table itself. Four seasons: the (elementwise) median of each block of 3
    consecutive rows, the reference's rule. One token: the lone position, which is the mean of all
    rows for ``single="mean"`` (where training put its one-token median) or the first row for
    ``"january"`` (the reference's inference, nearest-neighbour resizing of the table to 1).
    """
    lone = table[:, :1] if single == "january" else table.mean(1, keepdim=True)
    months = table.shape[1]
    if tokens == months:
        return table, lone
    if tokens == 1:
        return lone, lone
    return table.unflatten(1, (tokens, months // tokens)).median(2).values, lone


def place_positions(rows: Tensor, lone: Tensor, present: Tensor) -> Tensor:
    """Per-token position terms for the (N, T) ``present`` mask: ``rows`` (1, T, E), except that a
    pixel with one present token gets ``lone`` (1, 1, E) there, as a single token would."""
    if present.shape[1] == 1:
        return rows
    alone = present.sum(1) == 1
    return torch.where(alone[:, None, None], lone, rows) if alone.any() else rows


def positions(table: Tensor, present: Tensor, single: str = "mean") -> Tensor:
    """Per-token position terms from a (1, months, E) table for the (N, T) ``present`` mask
    (see :func:`position_rows` and :func:`place_positions`)."""
    return place_positions(*position_rows(table, present.shape[1], single), present)


def eval_layers(
    layers: Sequence[nn.TransformerEncoderLayer],
    seq: Tensor,
    key_mask: Tensor | None,
    qkv: Tensor | None,
    precision: str = "fp32",
) -> Tensor:
    """The encoder layers by hand (SDPA) over ``seq`` (N, L, D) with ``key_mask`` (N, L; True =
    left out) or None, first-layer ``qkv`` given or None; the last layer computes the CLS token
    only: returns (N, D).

    ``precision`` "bf16" runs every layer but the last in bfloat16 throughout: weights cast per
    call, the residual stream kept in bf16, so nothing is cast back and forth between operations
    as autocast would (2.5-3.5x the plain forward on a CPU, 2.0-2.6x under autocast). What comes in
    (the spectral embedding and the first layer's folded q/k/v, made before this) and the last
    layer (CLS only) stay float32: they cost little, and rounding the raw inputs, or what the
    class scores see, costs most agreement (bench/README.md, "Encoder").
    """
    if precision not in PRECISIONS:
        raise TimeSenCLIPError(
            f"precision {precision!r} is not known: use one of {', '.join(PRECISIONS)}."
        )
    attn_mask = None if key_mask is None else ~key_mask[:, None, None, :]
    *body, last = layers
    if precision == "bf16" and body:
        seq = seq.to(torch.bfloat16)
        qkv = None if qkv is None else qkv.to(torch.bfloat16)
    for i, layer in enumerate(body):
        seq = _layer_eval(layer, seq, attn_mask, qkv if i == 0 else None)
    return _last_layer_eval(last, seq.float(), key_mask)


def _apply_in_dtype(module: nn.Linear | nn.LayerNorm, x: Tensor) -> Tensor:
    """``module(x)`` with the weights in ``x``'s dtype (a no-op cast in float32)."""
    w, b = module.weight.to(x.dtype), module.bias.to(x.dtype)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, w, b, module.eps)
    return F.linear(x, w, b)


def _post_norm_ffn(layer: nn.TransformerEncoderLayer, x: Tensor, attn_out: Tensor) -> Tensor:
    x = _apply_in_dtype(layer.norm1, x + _apply_in_dtype(layer.self_attn.out_proj, attn_out))
    hidden = F.relu(_apply_in_dtype(layer.linear1, x))
    return _apply_in_dtype(layer.norm2, x + _apply_in_dtype(layer.linear2, hidden))


def _layer_eval(
    layer: nn.TransformerEncoderLayer, x: Tensor, attn_mask: Tensor | None, qkv: Tensor | None
) -> Tensor:
    """One post-norm ``TransformerEncoderLayer`` (ReLU, no dropout) with the layer's own weights,
    in ``x``'s dtype."""
    attn = layer.self_attn
    if qkv is None:
        dtype = x.dtype
        qkv = F.linear(x, attn.in_proj_weight.to(dtype), attn.in_proj_bias.to(dtype))
    q, k, v = qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return _post_norm_ffn(layer, x, o.transpose(1, 2).flatten(2))


def _last_layer_eval(
    layer: nn.TransformerEncoderLayer, x: Tensor, key_mask: Tensor | None
) -> Tensor:
    """The last layer for the CLS token only, (N, L, D) -> (N, D).

    The key and value projections are moved to the CLS side: ``q . (W_k x_j + b_k)`` equals
    ``(W_k^T q) . x_j`` plus a term constant over j (which softmax ignores), and the value mix
    ``sum_j a_j (W_v x_j + b_v)`` equals ``W_v (sum_j a_j x_j) + b_v``; so no token but CLS is
    projected at all.
    """
    attn = layer.self_attn
    heads, hd, dim = attn.num_heads, attn.head_dim, x.shape[-1]
    w, b = attn.in_proj_weight, attn.in_proj_bias
    w_k, w_v = w[dim:].view(2, heads, hd, dim).unbind(0)
    cls = x[:, 0]
    q = F.linear(cls, w[:dim], b[:dim]).view(-1, heads, hd) * hd**-0.5
    scores = torch.einsum("nhe,hed->nhd", q, w_k) @ x.transpose(1, 2)  # (N, heads, L)
    if key_mask is not None:
        scores = scores.masked_fill(key_mask[:, None, :], float("-inf"))
    mix = scores.softmax(-1) @ x  # (N, heads, D): each head's attention-weighted token mean
    o = torch.einsum("nhd,hed->nhe", mix, w_v) + b[2 * dim :].view(heads, hd)
    return _post_norm_ffn(layer, cls, o.flatten(1))
