"""Training pairs in memory: pixel series, ground-photo embeddings, ids and task labels of N points.

Arrays (N points, P photos per point, D embedding width)::

    series       (N, 12, 10) float32  L2A digital numbers, pre-2022 scale (no BOA offset),
                                      BANDS order; NaN = no valid observation that month
    month_mask   (N, 12)     bool     True = month present (all bands finite)
    ground       (N, P, D)   float32  raw CLIP image embeddings in W, E, N, S order; 0 = absent
    photo_mask   (N, P)      bool     True = photo present
    point_id     (N,)        str
    lon, lat     (N,)        float64  degrees (NaN = unknown)
    labels[task] (N,)        int16    class index of the built-in class set, -1 = unknown
    raw[field]   (N,)        str      the label codes as read (lc1, lu1, eunis, bioregion, country)

``encoder.pairs_store`` keeps them on disk, ``encoder.pairs_assembly`` builds them from points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from encoder.preprocess import BANDS
from timesenclip.common.errors import TimeSenCLIPError

MONTHS = 12


class PairsError(TimeSenCLIPError):
    """A pairs store or one of its sources is missing, malformed or inconsistent."""


@dataclass
class Pairs:
    """Training pairs in memory; array shapes and meaning as in the module docstring."""

    point_id: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    series: np.ndarray
    month_mask: np.ndarray
    ground: np.ndarray
    photo_mask: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.point_id)
        shapes = {
            "lon": (self.lon, (n,)),
            "lat": (self.lat, (n,)),
            "series": (self.series, (n, MONTHS, len(BANDS))),
            "month_mask": (self.month_mask, (n, MONTHS)),
            "photo_mask": (self.photo_mask, self.ground.shape[:2]),
        }
        shapes |= {f"labels/{k}": (v, (n,)) for k, v in self.labels.items()}
        shapes |= {f"raw/{k}": (v, (n,)) for k, v in self.raw.items()}
        for name, (array, shape) in shapes.items():
            if array.shape != shape:
                raise PairsError(f"pairs array {name} has shape {array.shape}, expected {shape}")
        if self.ground.ndim != 3 or len(self.ground) != n:
            raise PairsError(
                f"pairs array ground has shape {self.ground.shape}, expected (N, P, D)"
            )

    def __len__(self) -> int:
        return len(self.point_id)

    def subset(self, index: np.ndarray | slice) -> Pairs:
        """The pairs at ``index`` (positions or a boolean mask)."""
        return Pairs(
            self.point_id[index],
            self.lon[index],
            self.lat[index],
            self.series[index],
            self.month_mask[index],
            self.ground[index],
            self.photo_mask[index],
            {k: v[index] for k, v in self.labels.items()},
            {k: v[index] for k, v in self.raw.items()},
        )
