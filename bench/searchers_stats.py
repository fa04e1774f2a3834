"""The statistics of the searcher comparison: bootstrap intervals and paired tests over seeds.

Plain numpy, exact where the sample is small (a comparison has 5-10 seeds), so the numbers do not
depend on whether scipy is installed; ``tests/test_searchers_stats.py`` checks them on known inputs
(and against scipy where it is).

* :func:`bootstrap_ci`: percentile bootstrap interval of a statistic (default the mean).
* :func:`sign_flip_test`: the paired permutation test of a mean difference (every one of the
  2^n sign assignments of the n paired differences when n ≤ 20, a seeded sample beyond).
* :func:`wilcoxon_signed_rank`: Wilcoxon's signed-rank test, exact null distribution by enumeration,
  zero differences dropped (Wilcoxon's convention), tied magnitudes given their average rank.

Both tests are two-sided. With n pairs neither can give a p-value below 2/2^n: 0.0625 for 5 seeds,
which is why the report also pools the pairs of both datasets (10 pairs: 0.002).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

EXACT_MAX = 20
"""Up to this many pairs the permutation tests enumerate every sign assignment (2^20 ≈ 10^6)."""


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``level`` interval of ``statistic`` over ``values`` (seeded, so a report
    regenerates to the same digits). One value gives the degenerate interval (v, v); none, NaNs."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    stats = np.apply_along_axis(statistic, 1, x[idx]) if statistic is not np.mean else x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def _signs(n: int, resamples: int, seed: int) -> np.ndarray:
    """Every ±1 assignment of n signs (n ≤ EXACT_MAX), else ``resamples`` random ones."""
    if n <= EXACT_MAX:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    return np.random.default_rng(seed).choice((1.0, -1.0), size=(resamples, n))


def sign_flip_test(differences: Sequence[float], resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired permutation test that the mean of ``differences`` is 0: the share
    of sign assignments whose |mean| is at least the observed one. 1.0 when there is no pair."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    means = np.abs(_signs(d.size, resamples, seed) @ d) / d.size
    return float(np.mean(means >= observed - 1e-12))


def wilcoxon_signed_rank(differences: Sequence[float], resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test on paired ``differences`` (exact by enumeration).

    Zero differences are dropped; tied |differences| get their average rank. The statistic is the
    sum of the ranks of the positive differences, compared with its distribution when every sign is
    equally likely; p is the share of assignments at least as far from the null mean n(n+1)/4 as
    the observed. 1.0 when no non-zero difference is left."""
    d = np.asarray(differences, dtype=float)
    d = d[np.abs(d) > 1e-12]
    if d.size == 0:
        return 1.0
    ranks = _average_ranks(np.abs(d))
    observed = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    signs = _signs(d.size, resamples, seed)
    sums = ((signs > 0) * ranks).sum(axis=1)
    return float(np.mean(np.abs(sums - centre) >= abs(observed - centre) - 1e-9))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=float)
    ranks[order] = np.arange(1, x.size + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def paired_summary(learner: Sequence[float], baseline: Sequence[float]) -> dict[str, float | int]:
    """Learner minus baseline over paired seeds: the mean difference, its bootstrap 95% interval, both
    tests' p-values and the wins, ties and losses of the learner."""
    a, b = np.asarray(learner, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    d = a - b
    low, high = bootstrap_ci(d)
    return {
        "n": int(d.size),
        "mean_diff": float(d.mean()) if d.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "p_sign_flip": sign_flip_test(d),
        "p_wilcoxon": wilcoxon_signed_rank(d),
        "wins": int((d > 1e-12).sum()),
        "ties": int((np.abs(d) <= 1e-12).sum()),
        "losses": int((d < -1e-12).sum()),
    }
