"""Task metrics on predictions: macro-AUC and accuracy (classification), MAE and RMSE (regression).

Each returns a float and NaN where the metric is undefined on the rows given (one class only, no rows),
so that bootstrap resamples on which it is undefined can be counted and left out.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney probability that a positive outscores a negative (ties 1/2)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # mid-ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest AUC averaged over classes, or the AUC of class 1 for two classes.

    ``labels`` are class indices ``[n]``; ``probabilities`` are ``[n, K]``. Classes absent from ``labels``
    are left out of the average; NaN when fewer than two classes are present.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 2:
        return binary_auc(labels == 1, probabilities[:, 1])
    present = [k for k in range(probabilities.shape[1]) if np.any(labels == k)]
    if len(present) < 2:
        return float("nan")
    return float(np.mean([binary_auc(labels == k, probabilities[:, k]) for k in present]))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    labels = np.asarray(labels)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels)) if labels.size else float("nan")


def mean_absolute_error(targets: np.ndarray, predictions: np.ndarray) -> float:
    targets = np.asarray(targets, dtype=np.float64)
    return float(np.mean(np.abs(targets - np.asarray(predictions, dtype=np.float64)))) if targets.size else float("nan")


def root_mean_squared_error(targets: np.ndarray, predictions: np.ndarray) -> float:
    targets = np.asarray(targets, dtype=np.float64)
    errors = targets - np.asarray(predictions, dtype=np.float64)
    return float(np.sqrt(np.mean(errors**2))) if targets.size else float("nan")
