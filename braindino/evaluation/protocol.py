"""The evaluation protocol, the same for every encoder: splits by subject, label fractions with repeated
seeds, model selection on validation subjects, test metrics with bootstrap intervals over subjects.

A task runner (``EmbeddingTask``, ``KnnProbe``, ``SegmentationTask``) knows how to fit on some rows, predict
others and score predictions; ``run_protocol`` does the rest. Test predictions are pooled over the folds
of a split (each subject predicted by the fold that held it out), so the interval resamples every test
subject. The point estimate is the mean over seeds; each bootstrap resample averages the seeds too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from braindino.evaluation.bootstrap import Interval, bootstrap_interval
from braindino.evaluation.splits import SubjectSplit, fraction_subset, subject_rows


@dataclass
class Fitted:
    """A fitted head (or probe) and what its training decided."""

    model: Any
    selection: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class TaskRunner(Protocol):
    primary: str
    higher_is_better: bool

    def fit(self, train_rows: np.ndarray, val_rows: np.ndarray, seed: int) -> Fitted: ...

    def predict(self, fitted: Fitted, rows: np.ndarray, keep: bool = False) -> np.ndarray: ...

    def metrics(self, rows: np.ndarray, outputs: np.ndarray) -> dict[str, float]: ...


@dataclass
class FractionResult:
    fraction: float
    train_subjects: float  # mean over seeds
    metrics: dict[str, float]  # mean over seeds
    seed_scores: list[float]  # the primary metric per seed
    interval: Interval
    test_subjects: int


@dataclass
class ProtocolResult:
    primary: str
    higher_is_better: bool
    fractions: list[FractionResult]
    reference: Fitted | None  # trained on every training subject of fold 0 with seed 0 (what gets registered)
    test_rows: np.ndarray  # pooled test rows, and seed 0's outputs for them at the largest fraction
    test_outputs: np.ndarray | None


def run_protocol(task: TaskRunner, subjects: np.ndarray, split: SubjectSplit, fractions: list[float], seeds: int,
                 strata: dict[str, str] | None = None, minimum: int = 1, resamples: int = 1000,
                 confidence: float = 0.95) -> ProtocolResult:
    """Every (fraction, seed) of ``task`` on ``split``; rows are matched to the split by ``subjects[row]``."""
    subjects = np.asarray(subjects)
    fractions = sorted(set(fractions))
    reference, results = None, []
    test_rows = np.concatenate([subject_rows(subjects, fold.test) for fold in split.folds])
    kept_outputs = None
    for fraction in fractions:
        outputs, scores, sizes = [], [], []
        for seed in range(seeds):
            pooled = []
            for index, fold in enumerate(split.folds):
                train = fraction_subset(fold.train, fraction, seed, strata, minimum)
                fitted = task.fit(subject_rows(subjects, train), subject_rows(subjects, fold.val), seed)
                full = fraction == fractions[-1] and seed == 0
                if full and index == 0:
                    reference = fitted
                pooled.append(task.predict(fitted, subject_rows(subjects, fold.test), keep=full))
                sizes.append(len(train))
            outputs.append(np.concatenate(pooled))
            scores.append(task.metrics(test_rows, outputs[-1]))
        if fraction == fractions[-1]:
            kept_outputs = outputs[0]

        def statistic(picked: np.ndarray, outputs=outputs) -> float:
            return float(np.mean([task.metrics(test_rows[picked], out[picked])[task.primary] for out in outputs]))

        interval = bootstrap_interval(subjects[test_rows], statistic, resamples, confidence, seed=0)
        results.append(FractionResult(
            fraction=fraction, train_subjects=float(np.mean(sizes)),
            metrics={name: float(np.nanmean([s[name] for s in scores])) if any(np.isfinite(s[name]) for s in scores)
                     else float("nan") for name in scores[0]},
            seed_scores=[s[task.primary] for s in scores], interval=interval,
            test_subjects=len(set(subjects[test_rows]))))
    return ProtocolResult(task.primary, task.higher_is_better, results, reference, test_rows, kept_outputs)
