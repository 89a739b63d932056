"""Survival maths: the Cox partial likelihood (Breslow ties), Harrell's C-index, Kaplan-Meier and the log-rank test.

Times are non-negative floats, ``event`` is True for an observed event and False for censoring, and a
higher risk means an earlier expected event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import chi2


def cox_negative_log_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean over events of ``-(risk_i - log sum_{j: t_j >= t_i} exp(risk_j))``: the Cox partial likelihood
    with Breslow's handling of tied times (every tied subject stays in the others' risk sets).

    Zero (with a gradient path) when there is no event.
    """
    risk, time, event = risk.reshape(-1), time.reshape(-1), event.reshape(-1).bool()
    order = torch.argsort(time, descending=True)
    risk_sorted, time_sorted = risk[order], time[order]
    cumulative = torch.logcumsumexp(risk_sorted, dim=0)  # log-sum over everyone at least as late
    ascending = torch.sort(time).values
    at_risk = len(time) - torch.searchsorted(ascending, time_sorted, side="left")  # count of t_j >= t_i
    log_risk_set = cumulative[at_risk - 1]
    observed = event[order]
    if not observed.any():
        return risk.sum() * 0.0
    return -(risk_sorted[observed] - log_risk_set[observed]).mean()


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tied_tol: float = 1e-8) -> float:
    """Harrell's C: among comparable pairs, the share where the subject with the earlier event has the higher risk.

    A pair (i, j) is comparable when i has an event and j outlived it (``t_j > t_i``), or was censored at
    the same time. Tied risks count one half. NaN when no pair is comparable (e.g. no events).
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=np.float64)
    later = time[None, :] > time[:, None]
    censored_same_time = (time[None, :] == time[:, None]) & ~event[None, :]
    comparable = event[:, None] & (later | censored_same_time)
    if not comparable.any():
        return float("nan")
    difference = risk[:, None] - risk[None, :]
    tied = np.abs(difference) <= tied_tol
    score = np.where(tied, 0.5, (difference > 0).astype(np.float64))
    return float(score[comparable].sum() / comparable.sum())


@dataclass(frozen=True)
class KaplanMeier:
    """A Kaplan-Meier estimate: survival just after each distinct event time (a step function from 1 at 0)."""

    time: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> KaplanMeier:
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    times = np.unique(time[event])
    at_risk = np.array([(time >= t).sum() for t in times], dtype=np.int64)
    deaths = np.array([(event & (time == t)).sum() for t in times], dtype=np.int64)
    return KaplanMeier(times, np.cumprod(1.0 - deaths / np.maximum(at_risk, 1)), at_risk)


@dataclass(frozen=True)
class LogRank:
    statistic: float  # chi-square with one degree of freedom
    p_value: float


def log_rank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> LogRank:
    """Two-group log-rank test (``group`` boolean): observed minus expected events in the first group, summed
    over the distinct event times, squared over its hypergeometric variance. NaN when undefined."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    group = np.asarray(group, dtype=bool)
    observed_minus_expected, variance = 0.0, 0.0
    for t in np.unique(time[event]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d, d1 = (event & (time == t)).sum(), (event & (time == t) & group).sum()
        observed_minus_expected += d1 - d * n1 / n
        if n > 1:
            variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    if variance <= 0:
        return LogRank(float("nan"), float("nan"))
    statistic = observed_minus_expected**2 / variance
    return LogRank(float(statistic), float(chi2.sf(statistic, df=1)))
