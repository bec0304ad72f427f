"""Temporal augmentation on embedded month tokens, positioned by the model's rule
(:func:`encoder.model.positions`): kept months keep their calendar positions, a single kept token
takes the lone-token position (``single``: the mean of all positions, or January).

Two recipes (``train.augment``): ``tsmixaug``, what the published ``TimeSenCLIP_TSMixAug`` weights
were trained with: on a fraction of batches (0.5), the median token or a quarter drop with equal
odds; ``all``: one of every augmentation here (median, quarter drop, random subset). Two details of
the reference's TSMixAug are not reproduced: it draws one dropped quarter per batch (we draw one
per pixel), and it gives the 9 remaining tokens the positions of the first 9 months, not their own
(our month-mask inference keeps each month's own position, so training does the same).

All functions take spectral tokens ``(N, T, D)`` without positions (``encoder.embed_spectral``),
the month mask ``(N, T)`` (True = present; absent tokens may hold anything finite) and the position
table ``(1, T, D)``, and return ``(tokens + positions, padding_mask)`` ready for
``encoder.encode_tokens`` (padding_mask True = leave the token out). Random draws come from an
explicit CPU ``torch.Generator`` so a run is reproducible from its seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from encoder.model import positions
from timesenclip.common.errors import TimeSenCLIPError

AUGMENTATIONS = ("median", "quarter_drop", "subset")
TSMIXAUG = ("median", "quarter_drop")
RECIPES = ("tsmixaug", "all")
QUARTER = 3  # consecutive months removed by quarter_drop
MAX_SUBSET = 11  # a random subset keeps 1..11 months


def median_token(
    tokens: Tensor, month_mask: Tensor, pos: Tensor, single: str = "mean"
) -> tuple[Tensor, Tensor]:
    """One token per pixel: the median over present months (torch's lower median for even
    counts), at the lone-token position (``"mean"`` of all positions, as the published model was
    trained, or ``"january"``)."""
    # float32: NaN-aware medians are not available for every reduced precision on every device.
    values = tokens.float().masked_fill(~month_mask[..., None], float("nan"))
    median = values.nanmedian(dim=1, keepdim=True).values
    padding = ~month_mask.any(1, keepdim=True)
    return median.nan_to_num(0.0) + positions(pos, ~padding, single), padding


def quarter_drop(
    tokens: Tensor,
    month_mask: Tensor,
    pos: Tensor,
    generator: torch.Generator,
    single: str = "mean",
) -> tuple[Tensor, Tensor]:
    """Remove 3 consecutive months (start drawn per pixel from 0..T-3); the rest keep their
    positions. A pixel whose present months all fall in the dropped block keeps them all."""
    n, t = month_mask.shape
    start = torch.randint(0, t - QUARTER + 1, (n, 1), generator=generator).to(month_mask.device)
    months = torch.arange(t, device=month_mask.device)
    dropped = (months >= start) & (months < start + QUARTER)
    return _keep(tokens, month_mask, month_mask & ~dropped, pos, single)


def random_subset(
    tokens: Tensor,
    month_mask: Tensor,
    pos: Tensor,
    generator: torch.Generator,
    single: str = "mean",
) -> tuple[Tensor, Tensor]:
    """Keep a uniformly random subset of k present months, k drawn from 1..min(11, present)."""
    n, t = month_mask.shape
    present = month_mask.sum(1, keepdim=True).cpu()
    k = 1 + (torch.rand((n, 1), generator=generator) * present.clamp(max=MAX_SUBSET)).long()
    # Random order among present months (absent ones sort last); keep the first k.
    order = torch.rand((n, t), generator=generator).masked_fill(~month_mask.cpu(), 2.0)
    rank = order.argsort(1).argsort(1)
    keep = (rank < k).to(month_mask.device) & month_mask
    return _keep(tokens, month_mask, keep, pos, single)


def _keep(
    tokens: Tensor, month_mask: Tensor, keep: Tensor, pos: Tensor, single: str
) -> tuple[Tensor, Tensor]:
    keep = torch.where(keep.any(1, keepdim=True), keep, month_mask)
    # The model's own rule, so a single kept month sits at the lone position as in forward().
    return tokens + positions(pos, keep, single), ~keep


def augment(
    kind: str,
    tokens: Tensor,
    month_mask: Tensor,
    pos: Tensor,
    generator: torch.Generator,
    single: str = "mean",
) -> tuple[Tensor, Tensor]:
    """Apply the augmentation named ``kind`` (one of :data:`AUGMENTATIONS`); a lone token sits at
    the ``single`` position."""
    if kind == "median":
        return median_token(tokens, month_mask, pos, single)
    if kind == "quarter_drop":
        return quarter_drop(tokens, month_mask, pos, generator, single)
    if kind == "subset":
        return random_subset(tokens, month_mask, pos, generator, single)
    raise TimeSenCLIPError(f"unknown augmentation {kind!r}: use one of {', '.join(AUGMENTATIONS)}")


def recipe_kinds(recipe: str, augmentations: tuple[str, ...] = AUGMENTATIONS) -> tuple[str, ...]:
    """The augmentations a recipe draws from: :data:`TSMIXAUG` for ``tsmixaug``, ``augmentations``
    for ``all``."""
    if recipe == "tsmixaug":
        return TSMIXAUG
    if recipe == "all":
        return augmentations
    raise TimeSenCLIPError(
        f"unknown augmentation recipe {recipe!r}: use one of {', '.join(RECIPES)}"
    )


def choose(
    generator: torch.Generator, probability: float, kinds: tuple[str, ...] = AUGMENTATIONS
) -> str | None:
    """With ``probability``, one of ``kinds`` uniformly at random; else None (no augmentation)."""
    if not kinds or torch.rand((), generator=generator).item() >= probability:
        return None
    return kinds[int(torch.randint(len(kinds), (), generator=generator))]
