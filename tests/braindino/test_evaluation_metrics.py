"""Evaluation metrics against independent references: scikit-learn (AUC), scikit-survival (C-index,
log-rank, Kaplan-Meier), and brute-force float64 computations written here (Cox partial likelihood,
Dice/HD95/NSD on small masks)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from braindino.evaluation.bootstrap import bootstrap_interval
from braindino.evaluation.metrics import macro_auc, mean_absolute_error
from braindino.evaluation.segmentation import label_scores
from braindino.evaluation.survival import concordance_index, cox_negative_log_likelihood, kaplan_meier, log_rank


def test_macro_auc_matches_scikit_learn_with_tied_scores():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    scores = np.round(rng.random((60, 3)), 1)  # coarse: many ties
    probabilities = scores / scores.sum(1, keepdims=True)
    assert macro_auc(labels, probabilities) == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))
    binary = labels % 2
    assert macro_auc(binary, np.stack([1 - scores[:, 0], scores[:, 0]], 1)) == pytest.approx(roc_auc_score(binary, scores[:, 0]))
    assert np.isnan(macro_auc(np.zeros(5, int), np.full((5, 3), 1 / 3)))  # one class: undefined


def survival_sample(seed: int, n: int = 80):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 25, n).astype(float)  # integer times: ties
    event = rng.random(n) < 0.6
    risk = np.round(rng.normal(size=n) - 0.05 * time, 1)  # rounded: tied risks
    return time, event, risk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concordance_index_matches_scikit_survival(seed):
    from sksurv.metrics import concordance_index_censored

    time, event, risk = survival_sample(seed)
    assert concordance_index(time, event, risk) == pytest.approx(concordance_index_censored(event, time, risk)[0], abs=1e-12)


def test_log_rank_and_kaplan_meier_match_scikit_survival():
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    time, event, risk = survival_sample(3)
    group = risk > np.median(risk)
    structured = np.array(list(zip(event, time)), dtype=[("event", bool), ("time", float)])
    statistic, p_value = compare_survival(structured, group.astype(int))
    ours = log_rank(time, event, group)
    assert ours.statistic == pytest.approx(statistic) and ours.p_value == pytest.approx(p_value)
    times, survival = kaplan_meier_estimator(event, time)
    curve = kaplan_meier(time, event)
    reference = dict(zip(times, survival))
    assert all(reference[t] == pytest.approx(s) for t, s in zip(curve.time, curve.survival))


def test_cox_partial_likelihood_with_ties_equals_the_direct_breslow_formula():
    time, event, risk = survival_sample(4, n=30)
    direct = 0.0
    for i in np.flatnonzero(event):
        at_risk = time >= time[i]  # Breslow: everyone tied with i stays in its risk set
        direct -= risk[i] - np.log(np.exp(risk[at_risk]).sum())
    direct /= event.sum()
    ours = cox_negative_log_likelihood(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert ours.item() == pytest.approx(direct, rel=1e-12)
    none = cox_negative_log_likelihood(torch.tensor(risk, requires_grad=True), torch.tensor(time), torch.zeros(30))
    assert none.item() == 0.0 and none.requires_grad


def brute_surface(mask: np.ndarray) -> list[tuple[int, ...]]:
    """Voxels of ``mask`` with a face neighbour outside it or outside the array."""
    points = []
    for index in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                points.append(index)
                break
    return points


def brute_scores(prediction, reference, spacing, tolerance):
    a, b = (np.array(brute_surface(m), dtype=np.float64) * spacing for m in (prediction, reference))
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    distances = np.concatenate([pairwise.min(1), pairwise.min(0)])
    dice = 2 * (prediction & reference).sum() / (prediction.sum() + reference.sum())
    return dice, np.percentile(distances, 95), np.mean(distances <= tolerance)


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_hd95_and_nsd_in_mm_match_a_brute_force_computation(seed):
    rng = np.random.default_rng(seed)
    spacing = np.array([0.8, 1.1, 2.5])
    grid = np.indices((14, 12, 9)).astype(float)
    centre = np.array([7, 6, 4])[:, None, None, None]
    reference = (((grid - centre) * spacing[:, None, None, None]) ** 2).sum(0) < 16.0
    prediction = reference.copy()
    prediction[rng.random(reference.shape) < 0.08] ^= True  # scattered errors: many small surfaces
    prediction[:3] = False
    ours = label_scores(prediction, reference, tuple(spacing), tolerance=1.5)
    dice, hd95, nsd = brute_scores(prediction, reference, spacing, 1.5)
    assert ours.dice == pytest.approx(dice) and ours.hd95 == pytest.approx(hd95) and ours.nsd == pytest.approx(nsd)
    assert 0 < ours.nsd < 1 and ours.hd95 > 0


def test_the_empty_mask_policy():
    empty, full = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    full[1:3, 2:4, 3:5] = True
    both_empty = label_scores(empty, empty, (1.0, 1.0, 2.0), 1.0)
    assert (both_empty.dice, both_empty.hd95, both_empty.nsd) == (1.0, 0.0, 1.0)
    diagonal = np.sqrt(4.0**2 + 5.0**2 + 12.0**2)
    for pred, ref in ((empty, full), (full, empty)):
        missed = label_scores(pred, ref, (1.0, 1.0, 2.0), 1.0)
        assert (missed.dice, missed.nsd) == (0.0, 0.0) and missed.hd95 == pytest.approx(diagonal)


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_subjects():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 320):
        subjects = np.repeat(np.arange(n), 2)  # two rows per subject: resampled together
        errors = np.abs(rng.normal(size=2 * n))
        point = mean_absolute_error(errors, np.zeros_like(errors))
        interval = bootstrap_interval(subjects, lambda rows: mean_absolute_error(errors[rows], 0 * errors[rows]), 400)
        assert interval.low < point < interval.high and interval.valid == 400
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16)


def test_bootstrap_leaves_out_resamples_where_the_metric_is_undefined():
    labels = np.array([0, 0, 0, 1])
    probabilities = np.stack([1 - np.array([0.1, 0.2, 0.3, 0.9]), [0.1, 0.2, 0.3, 0.9]], 1)
    interval = bootstrap_interval(np.arange(4), lambda rows: macro_auc(labels[rows], probabilities[rows]), 200)
    assert 0 < interval.valid < 200 and interval.low == interval.high == 1.0
