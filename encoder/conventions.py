"""A checkpoint's input conventions, as data: band order, normalisation constants, the position of
a lone token and the monthly composite rule its input is built with.

Our checkpoints record them (``encoder.checkpoint``); published checkpoints carry none and get
:class:`Conventions` ``()``, the values below. Which of the candidates the published weights were
trained with is settled by data: ``timesenclip evaluate --try-conventions``.

Pixel data in this project are always in :data:`BANDS` order; a model whose ``band_order`` differs
gets its input reordered by ``encoder.preprocess.normalize``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from timesenclip.common.errors import TimeSenCLIPError

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
# Published constants per band of BANDS; the model divides by HIGH (not HIGH - LOW), as trained.
LOW = (67.0, 122.0, 93.27, 158.5, 160.77, 174.27, 162.27, 149.0, 84.5, 66.27)
HIGH = (2089.0, 2598.45, 3214.5, 3620.45, 4033.61, 4613.0, 4825.45, 4945.72, 5140.84, 4414.45)
# The reference training CLI's default ``--channels``.
B4_FIRST = ("B04", "B03", "B02", *BANDS[3:])
# Where a lone token (an annual median, or a pixel with one present month) sits: the mean of all
# positions (what training did) or the first row, January (the reference's inference).
SINGLE_TOKEN_POSITIONS = ("mean", "january")
# How the pipeline composites this model's input: masked_median, our SCL-masked NaN-aware median
# (the default, also for published weights: it keeps clouds out); reference, the published
# training rule (pipeline.cube.temporal.reference_composite), for parity studies.
COMPOSITE_RULES = ("masked_median", "reference")


class ConventionsError(TimeSenCLIPError):
    """Input conventions that name unknown bands, wrong constants or unknown rules."""


def band_name(name: Any) -> str:
    """The :data:`BANDS` spelling of a band name: ``B4``, ``b04`` and ``B04`` give ``B04``."""
    text = name.decode() if isinstance(name, bytes) else str(name)
    found = re.fullmatch(r"B0?(\d{1,2})(A?)", text.strip().upper())
    canonical = None
    if found is not None:
        number, a = int(found.group(1)), found.group(2)
        canonical = f"B{number}A" if a else f"B{number:02d}"
    if canonical not in BANDS:
        raise ConventionsError(
            f"{name!r} is not a Sentinel-2 band of the model; use one of {' '.join(BANDS)}."
        )
    return canonical


def band_order(names: Iterable[Any]) -> tuple[str, ...]:
    """Canonical band names; they must be the 10 bands of :data:`BANDS`, each once, in any order."""
    order = tuple(band_name(n) for n in names)
    if sorted(order) != sorted(BANDS):
        raise ConventionsError(
            f"a band order must name each of the 10 bands {' '.join(BANDS)} once; "
            f"got {' '.join(order) or 'nothing'}."
        )
    return order


def published_constants(
    order: Iterable[Any] = BANDS,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(LOW, HIGH) of the bands named by ``order``, each band keeping its own constants."""
    index = [BANDS.index(b) for b in band_order(order)]
    return tuple(LOW[i] for i in index), tuple(HIGH[i] for i in index)


@dataclass(frozen=True)
class Conventions:
    """How a model expects its input: ``band_order`` of its input channels, ``low``/``high`` per
    channel (in that order; ``x = (dn - low) / high``, clamped to 0..1 when ``clamp``), where a
    lone token sits and the monthly composite rule its input is built with."""

    band_order: tuple[str, ...] = BANDS
    low: tuple[float, ...] = LOW
    high: tuple[float, ...] = HIGH
    clamp: bool = True
    single_token_position: str = "mean"
    composite: str = "masked_median"

    def __post_init__(self) -> None:
        object.__setattr__(self, "band_order", band_order(self.band_order))
        for name in ("low", "high"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != len(BANDS):
                raise ConventionsError(
                    f"conventions need one {name} value per band ({len(BANDS)}), got {len(values)}."
                )
            object.__setattr__(self, name, values)
        if not all(h > 0 for h in self.high):
            raise ConventionsError(f"every high must be positive, got {self.high}.")
        for name, allowed in (
            ("single_token_position", SINGLE_TOKEN_POSITIONS),
            ("composite", COMPOSITE_RULES),
        ):
            if getattr(self, name) not in allowed:
                raise ConventionsError(
                    f"{name} {getattr(self, name)!r} is unknown; use one of {', '.join(allowed)}."
                )

    @classmethod
    def published(
        cls,
        band_order: Iterable[Any] = BANDS,
        constants_order: Iterable[Any] | None = None,
        **rules: Any,
    ) -> Conventions:
        """Channels in ``band_order`` normalised with the published constants of the bands named
        by ``constants_order`` (default: each band its own)."""
        order = tuple(band_order)
        low, high = published_constants(order if constants_order is None else constants_order)
        return cls(order, low, high, **rules)

    @property
    def band_index(self) -> tuple[int, ...]:
        """For each input channel, its band's index in :data:`BANDS`."""
        return tuple(BANDS.index(b) for b in self.band_order)

    def constants_order(self) -> tuple[str, ...] | None:
        """The band order whose published constants ``low``/``high`` are, or None (custom)."""
        index = {(lo, hi): b for b, lo, hi in zip(BANDS, LOW, HIGH, strict=True)}
        names = [index.get(pair) for pair in zip(self.low, self.high, strict=True)]
        return None if None in names else tuple(names)

    def override(self, overrides: ConventionOverrides | None) -> Conventions:
        """These conventions with the fields ``overrides`` sets replaced. A new band order (or
        constants order) takes the published constants of the bands it names."""
        if overrides is None:
            return self
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("single_token_position", overrides.single_token_position),
                ("composite", overrides.composite),
            )
            if v is not None
        }
        if overrides.band_order is not None or overrides.constants_order is not None:
            order = overrides.band_order or self.band_order
            constants = overrides.constants_order or order
            changes["band_order"] = order
            changes["low"], changes["high"] = published_constants(constants)
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line: band order, whose constants, lone-token position and composite rule."""
        constants = self.constants_order()
        if constants == self.band_order:
            told = "each band's own"
        elif constants is None:
            told = "custom"
        else:
            told = "those of " + " ".join(constants)
        return (
            f"bands {' '.join(self.band_order)}; constants: {told}; "
            f"lone token: {self.single_token_position}; composite: {self.composite}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain python types (lists), for checkpoints and JSON."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Conventions:
        """From :meth:`to_dict` output; unknown keys are ignored, absent ones take the defaults."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})


@dataclass(frozen=True)
class ConventionOverrides:
    """Conventions a user sets over a checkpoint's own (a workflow's ``model`` section, or
    ``timesenclip convert``); None keeps the checkpoint's value. Hashable, so loaders can cache
    on it."""

    band_order: tuple[str, ...] | None = None
    constants_order: tuple[str, ...] | None = None
    single_token_position: str | None = None
    composite: str | None = None

    def __post_init__(self) -> None:
        for name in ("band_order", "constants_order"):
            if (value := getattr(self, name)) is not None:
                object.__setattr__(self, name, band_order(value))
        Conventions().override(self)  # validates the rules

    def __bool__(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))
