"""Accuracy and class areas from a stratified random sample of a map.

One estimator serves both good-practice cases. Stehman (2014, Int. J. Remote Sens. 35:4923-4939)
writes every quantity as a total or a ratio of totals of per-point indicators, each total estimated
stratum by stratum, ``T = sum_h N_h mean_h``, with the variance of a ratio ``R = T_y / T_x``

    V(R) = 1 / T_x^2  sum_h N_h^2 (1 - n_h / N_h) s2_h(y - R x) / n_h

(``s2_h`` the sample variance within stratum h). Area proportions and overall accuracy are ratios to
``x = 1``; user's accuracy of class k divides "mapped k and is k" by "mapped k", producer's accuracy
the same by "is k". When the strata are the map classes (or a simple random sample is
post-stratified by them) these are exactly the estimators of Olofsson et al. (2014, Remote Sens.
Environ. 148:42-57), whose formulas only leave out the finite population correction
``1 - n_h / N_h``, negligible for maps of millions of pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from timesenclip.common.errors import TimeSenCLIPError

Z95 = 1.96
"""Half-width of a 95 % interval in standard errors, rounded as both papers (and the IPCC good
practice guidance they follow) round the normal quantile 1.95996."""


@dataclass(frozen=True)
class Accuracy:
    """What a sample says about a map: rows of matrices are map classes, columns reference classes.

    Per-class arrays follow ``classes``; ``area`` holds proportions of the sampled strata's area
    (``population`` units). NaN marks what the sample cannot estimate (see ``notes``).
    """

    classes: tuple[str, ...]
    counts: np.ndarray
    proportions: np.ndarray
    area: np.ndarray
    area_se: np.ndarray
    overall: float
    overall_se: float
    users: np.ndarray
    users_se: np.ndarray
    producers: np.ndarray
    producers_se: np.ndarray
    population: float
    notes: tuple[str, ...]


class _Design:
    """The strata a sample was drawn from: sizes, sample sizes and each point's stratum."""

    def __init__(
        self, strata: np.ndarray, sizes: np.ndarray, names: Sequence[str], fpc: bool
    ) -> None:
        self.strata = strata
        self.members = np.eye(len(sizes))[strata].T  # (strata, points): 1 where a point is in h
        self.n = self.members.sum(1)
        self.sizes = np.where(self.n > 0, sizes, 0.0)  # unsampled strata leave the population
        self.fpc = 1.0 - self.n / np.where(sizes > 0, sizes, 1.0) if fpc else np.ones(len(sizes))
        self.names = names

    def means(self, values: np.ndarray) -> np.ndarray:
        """Per-stratum means of per-point ``values`` (points, m) -> (strata, m); 0 where n_h = 0."""
        return self.members @ values / np.maximum(self.n, 1.0)[:, None]

    def ratio(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``T_y / T_x`` per column and its standard error; NaN where ``T_x`` is 0."""
        ty, tx = self.sizes @ self.means(y), self.sizes @ self.means(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(tx > 0, ty / tx, np.nan)
        residual = y - np.nan_to_num(ratio) * x
        centred = residual - self.means(residual)[self.strata]
        # A stratum of one point has no variance estimate; it counts as 0 (said in the notes).
        s2 = self.members @ centred**2 / np.maximum(self.n - 1.0, 1.0)[:, None]
        weights = self.sizes**2 * self.fpc / np.maximum(self.n, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.where(tx > 0, np.sqrt(weights @ s2) / tx, np.nan)
        return ratio, se

    def notes(self) -> list[str]:
        notes = []
        total = self.sizes.sum()
        for name, n in zip(self.names, self.n, strict=True):
            if n == 1:
                notes.append(
                    f"stratum {name!r} has a single sample point: its variance cannot be "
                    "estimated and counts as zero, so the standard errors are somewhat too "
                    "small; label at least two points per stratum"
                )
        unsampled = [name for name, n in zip(self.names, self.n, strict=True) if n == 0]
        if unsampled:
            notes.append(
                f"strata with no sample point ({', '.join(map(repr, unsampled))}) are left out: "
                f"the estimates describe the sampled strata, {total:g} units in all"
            )
        return notes


def estimate(
    strata: np.ndarray,
    mapped: np.ndarray,
    reference: np.ndarray,
    stratum_sizes: Sequence[float],
    classes: Sequence[str],
    stratum_names: Sequence[str] | None = None,
    finite_population: bool = True,
) -> Accuracy:
    """Error matrix, accuracies and area proportions, with standard errors, from a sample.

    ``strata``, ``mapped`` and ``reference`` hold one integer per sample point: the index of its
    stratum in ``stratum_sizes`` (population units, e.g. pixels, per stratum) and of its map and
    reference class in ``classes``. Pass the map classes as the strata for Olofsson et al.'s case.
    ``finite_population=False`` leaves out the correction for sampling without replacement, as
    Olofsson et al. print their formulas (a stratum sampled whole then still shows variance).
    """
    strata, mapped, reference = (np.asarray(a, dtype=np.intp) for a in (strata, mapped, reference))
    sizes = np.asarray(stratum_sizes, dtype=np.float64)
    names = list(stratum_names or map(str, range(len(sizes))))
    k = len(classes)
    _check(strata, mapped, reference, sizes, k, names)
    design = _Design(strata, sizes, names, finite_population)
    notes = design.notes()

    weights = design.sizes / design.sizes.sum()
    counts = np.zeros((k, k))
    np.add.at(counts, (mapped, reference), 1)
    by_stratum = np.zeros((len(sizes), k, k))
    np.add.at(by_stratum, (strata, mapped, reference), 1)
    proportions = np.einsum("h,hij->ij", weights / np.maximum(design.n, 1.0), by_stratum)

    ones = np.ones((len(strata), 1))
    is_ref = np.eye(k)[reference]
    is_map = np.eye(k)[mapped]
    agree = is_ref * is_map
    area, area_se = design.ratio(is_ref, ones)
    overall, overall_se = design.ratio(agree.sum(1, keepdims=True), ones)
    users, users_se = design.ratio(agree, is_map)
    producers, producers_se = design.ratio(agree, is_ref)
    for name, mapped_k, is_k in zip(classes, is_map.any(0), is_ref.any(0), strict=True):
        if not mapped_k:
            notes.append(f"no sample point is mapped as {name!r}: its user's accuracy is unknown")
        if not is_k:
            notes.append(
                f"no sample point is {name!r} on the ground: its producer's accuracy is "
                "unknown and its estimated area is 0"
            )
    return Accuracy(
        classes=tuple(classes),
        counts=counts,
        proportions=proportions,
        area=area,
        area_se=area_se,
        overall=float(overall[0]),
        overall_se=float(overall_se[0]),
        users=users,
        users_se=users_se,
        producers=producers,
        producers_se=producers_se,
        population=float(design.sizes.sum()),
        notes=tuple(notes),
    )


def _check(
    strata: np.ndarray,
    mapped: np.ndarray,
    reference: np.ndarray,
    sizes: np.ndarray,
    k: int,
    names: Sequence[str],
) -> None:
    if not len(strata) == len(mapped) == len(reference):
        raise TimeSenCLIPError(
            f"got {len(strata)} strata, {len(mapped)} map classes and {len(reference)} reference "
            "classes: give one of each per sample point"
        )
    if not len(strata):
        raise TimeSenCLIPError("no sample point is left to assess the map with")
    for what, codes, top in (
        ("stratum", strata, len(sizes)),
        ("map class", mapped, k),
        ("reference class", reference, k),
    ):
        if codes.min() < 0 or codes.max() >= top:
            raise TimeSenCLIPError(f"a {what} index is outside 0..{top - 1}")
    n = np.bincount(strata, minlength=len(sizes))
    small = [f"{names[h]!r} ({sizes[h]:g} < {n[h]})" for h in np.flatnonzero(n > sizes)]
    if small:
        raise TimeSenCLIPError(
            f"strata smaller than their samples: {', '.join(small)}. Stratum sizes count the "
            "population's units (pixels of the stratum), so each is at least its sample size."
        )
