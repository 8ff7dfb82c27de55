"""Bootstrap confidence intervals that resample patients, not images, through scipy.stats.bootstrap.

Images of one patient are correlated: resampling images treats them as independent evidence and
gives intervals that are too narrow. Here the resampled units are groups (a `patient_id` column;
each row its own group where there is none): scipy draws group indices with replacement, and the
statistic sees every row of every drawn group. The same seed draws the same groups for every metric
and for both models of a paired comparison, so intervals of one evaluation are mutually consistent
and "A minus B" is paired on the same patients.

A statistic returns several named values at once (scipy takes vector-valued statistics), so one
draw serves every metric. A resample where a value is undefined (one class only, for AUROC) is
dropped for that value before the percentiles; an interval from fewer than half the resamples is
not reported.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap

# row indices -> named values (None: undefined on these rows)
Statistic = Callable[[np.ndarray], dict[str, float | None]]


def group_index(groups: Sequence | None, n: int) -> list[np.ndarray]:
    """Row indices per group, in first-seen order; rows with an empty group value are their own."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g if g not in ("", None) else ("\0row", i), []).append(i)
    return [np.array(v) for v in members.values()]


def intervals(statistic: Statistic, members: list[np.ndarray], n_resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of every value `statistic` returns, from one set of resampled groups
    (so the intervals of one evaluation come from the same draws); None where mostly undefined."""
    keys = list(statistic(np.concatenate(members)))

    def vector(drawn: np.ndarray) -> np.ndarray:
        values = statistic(np.concatenate([members[int(g)] for g in drawn]))
        return np.array([np.nan if values.get(k) is None else float(values[k]) for k in keys])

    with warnings.catch_warnings():  # scipy's own interval is NaN when any resample is: not used
        warnings.simplefilter("ignore", DegenerateDataWarning)
        res = bootstrap((np.arange(len(members)),), vector, n_resamples=n_resamples, vectorized=False,
                        confidence_level=level, method="percentile", random_state=np.random.default_rng(seed))
    tail = (1 - level) / 2 * 100
    out = {}
    for k, values in zip(keys, np.atleast_2d(res.bootstrap_distribution)):
        values = values[np.isfinite(values)]
        out[k] = (tuple(float(v) for v in np.percentile(values, [tail, 100 - tail]))
                  if len(values) >= n_resamples / 2 else None)
    return out


def paired_difference(statistic_a: Statistic, statistic_b: Statistic, members: list[np.ndarray],
                      n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple | None]:
    """Intervals of A minus B for every value both return, on the same resampled patients."""
    def diff(rows: np.ndarray) -> dict:
        a, b = statistic_a(rows), statistic_b(rows)
        return {k: None if a[k] is None or b.get(k) is None else a[k] - b[k] for k in a}

    return intervals(diff, members, n_resamples, seed, level)
