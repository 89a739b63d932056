"""Percentile bootstrap intervals that resample subjects (every row of a drawn subject comes along).

Percentile rather than BCa: BCa needs a jackknife over the same statistic, which fails whenever leaving
out a subject makes the metric undefined (one class left, no events). Resamples on which the statistic
is undefined (NaN) are counted and left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float
    valid: int  # resamples on which the statistic was defined
    resamples: int


def bootstrap_interval(groups: np.ndarray, statistic: Callable[[np.ndarray], float], resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile interval of ``statistic(row_indices)`` over resamples of the distinct ``groups`` (subjects).

    ``groups[i]`` names the subject of row ``i``; each resample draws as many subjects as there are, with
    replacement, and passes the rows of every drawn subject (repeated as often as it was drawn).
    """
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if groups.size else []
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples if members else 0):
        drawn = rng.integers(0, len(members), size=len(members))
        value = statistic(np.concatenate([members[g] for g in drawn]))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return Interval(float("nan"), float("nan"), confidence, 0, resamples)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high), confidence, len(values), resamples)
