"""The estimators' 95 % intervals cover the truth about 95 % of the time, over many stratified
random samples of a synthetic map whose every pixel's true class is known.

Tolerance: with R samples and a true coverage of 0.95, the observed coverage has a binomial
standard error sqrt(0.95 * 0.05 / R), 0.0069 for R = 1000. The coverage of each class's area
and of overall accuracy must lie within 3 such errors of 0.95 (0.929 to 0.971): a correct
estimator fails one of the 10 checks with probability about 3 %, while intervals whose true
coverage were 0.92 or 0.98 would fail. The draws are seeded, so the figures are the same on every
run. User's and producer's accuracies, ratio estimators whose linearised variance is a little
optimistic at these sample sizes, are held to a looser bound on their average coverage.
"""

import numpy as np
import pytest

from pipeline.assess.estimators import Z95, estimate

REPS = 1000
K = 4
BINOMIAL_SE = np.sqrt(0.95 * 0.05 / REPS)


@pytest.fixture(scope="module")
def population():
    """40,000 pixels: true classes in shares 40/30/20/10 %, a map that gets 85-90 % of each
    right, and three horizontal bands as strata that are not the map classes."""
    rng = np.random.default_rng(20140422)
    side = 200
    truth = rng.choice(K, side * side, p=[0.4, 0.3, 0.2, 0.1])
    confusion = np.array(
        [
            [0.90, 0.05, 0.03, 0.02],
            [0.06, 0.88, 0.04, 0.02],
            [0.04, 0.05, 0.86, 0.05],
            [0.05, 0.04, 0.06, 0.85],
        ]
    )
    mapped = np.empty_like(truth)
    for k in range(K):
        where = np.flatnonzero(truth == k)
        mapped[where] = rng.choice(K, len(where), p=confusion[k])
    bands = np.repeat(np.arange(side) * 3 // side, side)
    return truth, mapped, bands


def coverage(population, strata, n_per_stratum, seed):
    truth, mapped, _ = population
    agree = truth == mapped
    true_values = np.concatenate(
        [
            np.bincount(truth, minlength=K) / len(truth),
            [agree.mean()],
            [agree[mapped == k].mean() for k in range(K)],
            [agree[truth == k].mean() for k in range(K)],
        ]
    )
    members = [np.flatnonzero(strata == h) for h in range(strata.max() + 1)]
    sizes = [len(m) for m in members]
    rng = np.random.default_rng(seed)
    hits = np.zeros(len(true_values))
    for _ in range(REPS):
        chosen = np.concatenate(
            [
                m[rng.choice(len(m), n, replace=False)]
                for m, n in zip(members, n_per_stratum, strict=True)
            ]
        )
        a = estimate(strata[chosen], mapped[chosen], truth[chosen], sizes, list("abcd"))
        values = np.concatenate([a.area, [a.overall], a.users, a.producers])
        errors = np.concatenate([a.area_se, [a.overall_se], a.users_se, a.producers_se])
        hits += np.abs(values - true_values) <= Z95 * errors
    return hits / REPS


def test_olofsson_intervals_cover_the_true_areas(population):
    """Strata are the map classes, 150 points each (Olofsson et al. 2014)."""
    _, mapped, _ = population
    covered = coverage(population, mapped, [150] * K, seed=1)
    print("Olofsson coverage: areas", covered[:K], "OA", covered[K], "UA, PA", covered[K + 1 :])
    assert np.all(np.abs(covered[: K + 1] - 0.95) <= 3 * BINOMIAL_SE), covered[: K + 1]
    assert 0.93 <= covered[K + 1 :].mean() <= 0.97


def test_stehman_intervals_cover_the_true_areas(population):
    """Strata are three bands across the map, not its classes (Stehman 2014), with unequal
    sample sizes."""
    _, _, bands = population
    covered = coverage(population, bands, [250, 200, 150], seed=2)
    print("Stehman coverage: areas", covered[:K], "OA", covered[K], "UA, PA", covered[K + 1 :])
    assert np.all(np.abs(covered[: K + 1] - 0.95) <= 3 * BINOMIAL_SE), covered[: K + 1]
    assert 0.93 <= covered[K + 1 :].mean() <= 0.97
