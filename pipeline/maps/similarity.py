"""Continuous maps from pixel embeddings: similarity to a text or to exemplars, change over years.

Values are stored on a ``ScoreRamp``: as uint8, pixel ``p`` in 0..200 stands for
``low + p * (high - low) / 200`` (GDAL scale and offset say so), 255 is nodata; as float16
(stored by GDAL as a half-float Float32 band), the value itself, NaN being nodata. Similarity is
the cosine between the unit pixel embedding and the unit target (``low, high = -1, 1``, so
``p = round((cosine + 1) * 100)``); change is ``1 - cosine`` between two years (``0, 2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from pipeline.maps.style import CONFIDENCE_RAMP, Ramp
from timesenclip.common.errors import TimeSenCLIPError

RAMP_NODATA = 255
RAMP_STEPS = 200
CONTRAST_PERCENTILES = (2.0, 98.0)
_SLUG_MAX = 60
_NOT_SLUG = re.compile(r"[^0-9a-z]+")
VIRIDIS = tuple(color for _, color, _ in CONFIDENCE_RAMP.stops)  # the maps' one viridis
INFERNO = ("#000004", "#57106e", "#bc3754", "#f98e09", "#fcffa4")


def slugify(text: str) -> str:
    """A file-safe name for a text: lower-case letters and digits joined by '_', at most 60."""
    slug = _NOT_SLUG.sub("_", text.lower()).strip("_")[:_SLUG_MAX].rstrip("_")
    if not slug:
        raise TimeSenCLIPError(
            f"the text {text!r} has no letter or digit to name its map file: reword it."
        )
    return slug


def unique_slugs(texts: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``slugify`` of each text, refusing two texts that would share a file name."""
    slugs: dict[str, str] = {}
    for text in texts:
        slug = slugify(text)
        if slug in slugs:
            raise TimeSenCLIPError(
                f"the texts {slugs[slug]!r} and {text!r} both give the file name {slug!r}: "
                "reword one of them."
            )
        slugs[slug] = text
    return tuple(slugs)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); rows with a NaN or of zero length become NaN."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, x / norm, np.nan).astype(np.float32)


def cosine(embeddings: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(P, T)`` cosines of ``(P, D)`` embeddings with ``(T, D)`` targets; NaN rows stay NaN."""
    if embeddings.shape[-1] != targets.shape[-1]:
        raise TimeSenCLIPError(
            f"embeddings are {embeddings.shape[-1]}-d but the targets {targets.shape[-1]}-d: "
            "use the CLIP text model the embeddings were made against."
        )
    return unit_rows(embeddings) @ unit_rows(targets).T


def change(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``1 - cosine`` of each pixel's embeddings ``(P, D)`` in two years; NaN where either is."""
    return 1.0 - (unit_rows(first) * unit_rows(second)).sum(axis=-1)


def exemplar(embeddings: np.ndarray) -> np.ndarray:
    """The unit mean of the unit embeddings ``(N, D)`` that are valid (at least one needed)."""
    rows = unit_rows(embeddings)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if not len(rows):
        raise TimeSenCLIPError("no exemplar pixel has an embedding: pick pixels inside the region.")
    return unit_rows(rows.mean(axis=0))


@dataclass(frozen=True)
class ScoreRamp:
    """How one continuous score is stored and shown: its range, dtype, units and colours.

    ``low`` and ``high`` are the values of pixels 0 and 200 (uint8) or the ends of the colour
    ramp (float16, whose pixels hold the values themselves).
    """

    quantity: str
    units: str
    low: float
    high: float
    colors: tuple[str, ...] = VIRIDIS
    float16: bool = False
    contrast: bool = False

    @classmethod
    def similarity(cls, float16: bool = False) -> ScoreRamp:
        return cls("cosine similarity", "cosine", -1.0, 1.0, VIRIDIS, float16)

    @classmethod
    def change(cls, float16: bool = False) -> ScoreRamp:
        return cls("embedding change (1 - cosine)", "1 - cosine", 0.0, 2.0, INFERNO, float16)

    def stretched(self, values: np.ndarray) -> ScoreRamp:
        """The same ramp over the 2nd-98th percentile of the finite ``values`` (the region's)."""
        finite = values[np.isfinite(values)]
        if not finite.size:
            return self
        low, high = (float(v) for v in np.percentile(finite, CONTRAST_PERCENTILES))
        if not high > low:  # a constant map: keep a range so that the scale is defined
            high = low + 1e-6
        return replace(self, low=low, high=high, contrast=True)

    @property
    def scale(self) -> float:
        return (self.high - self.low) / RAMP_STEPS

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Float values (NaN = none) -> the stored pixels (uint8 0..200 and 255, or float16)."""
        values = np.asarray(values, dtype=np.float32)
        if self.float16:
            return values.astype(np.float16)
        with np.errstate(invalid="ignore"):
            steps = np.rint(np.clip((values - self.low) / self.scale, 0, RAMP_STEPS))
        return np.where(np.isfinite(values), steps, RAMP_NODATA).astype(np.uint8)

    def decode(self, pixels: np.ndarray) -> np.ndarray:
        """Stored pixels -> float32 values, NaN where nodata (the inverse of ``encode``)."""
        if self.float16:
            return np.asarray(pixels, dtype=np.float32)
        values = self.low + pixels.astype(np.float32) * np.float32(self.scale)
        return np.where(pixels == RAMP_NODATA, np.nan, values).astype(np.float32)

    @property
    def nodata(self) -> float:
        return float("nan") if self.float16 else RAMP_NODATA

    def legend(self) -> str:
        """One paragraph that says what the pixel values mean."""
        span = "the region's 2nd-98th percentile" if self.contrast else "the full range"
        if self.float16:
            return (
                f"Pixel values are the {self.quantity} itself (float16); NaN = no data (outside "
                f"the region or no clear month). Colours span {self.low:.4g} to {self.high:.4g} "
                f"({span})."
            )
        return (
            f"Pixel value p (0..{RAMP_STEPS}) is the {self.quantity} "
            f"{self.low:.4g} + p x {self.scale:.6g} ({span}: 0 = {self.low:.4g}, "
            f"{RAMP_STEPS // 2} = {self.low + self.scale * RAMP_STEPS / 2:.4g}, "
            f"{RAMP_STEPS} = {self.high:.4g}; values beyond are clipped); {RAMP_NODATA} = no data "
            "(outside the region or no clear month). GDAL scale and offset hold the same rule."
        )

    def qgis_ramp(self) -> Ramp:
        """The QGIS colour ramp from ``low`` to ``high``, its stops labelled in the quantity's
        units (QGIS applies a band's scale and offset before it draws, so uint8 and float16
        maps take the same stops)."""
        values = np.linspace(self.low, self.high, len(self.colors))
        stops = tuple((float(v), c, f"{v:.3g}") for v, c in zip(values, self.colors, strict=True))
        return Ramp(stops=stops, kind="interpolated", unit=self.units)

    def cog_style(self, description: str) -> dict:
        """Keyword arguments for ``write_cog`` / ``mosaic_to_cog`` (nodata comes with the layer)."""
        style = {
            "description": description,
            "units": self.units,
            "overview_resampling": "average",
            "tags": {"QUANTITY": self.quantity, "LEGEND": self.legend()},
        }
        if not self.float16:
            style |= {"scale": self.scale, "offset": self.low}
        return style
