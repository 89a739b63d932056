"""The protocol: subject-level splits (no leakage by construction), stratification, label fractions, reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from braindino.evaluation.protocol import run_protocol
from braindino.evaluation.splits import SubjectSplit, assert_disjoint, fraction_subset, split_subjects, subject_rows
from braindino.evaluation.tasks import EmbeddingTask
from braindino.heads.training import FitSettings


@pytest.mark.parametrize("folds", [0, 2, 4])
def test_a_subject_under_two_scan_ids_never_sits_on_both_sides(folds):
    scans = {f"scan-{i}": f"subject-{i % 9}" for i in range(18)}  # every subject has two scan ids
    scans["scan-planted"] = "subject-3"
    subjects = np.array(list(scans.values()))
    for seed in range(5):
        split = split_subjects(list(subjects), folds=folds, seed=seed)
        for fold in split.folds:
            assert_disjoint(fold)
            sides = {side: set(subjects[subject_rows(subjects, getattr(fold, side))]) for side in ("train", "val", "test")}
            rows_of_3 = {side for side, members in sides.items() if "subject-3" in members}
            assert len(rows_of_3) <= 1
            assert set(np.flatnonzero(subjects == "subject-3")) <= set(subject_rows(subjects, getattr(fold, rows_of_3.pop()))) \
                if rows_of_3 else True
        tested = [s for fold in split.folds for s in fold.test]
        if folds:
            assert sorted(tested) == sorted(set(subjects))  # cross-validation tests every subject exactly once


def test_stratified_split_keeps_class_proportions_and_says_when_it_cannot():
    subjects = [f"s{i:02d}" for i in range(40)]
    strata = {s: "AD" if i < 10 else "CN" for i, s in enumerate(subjects)}
    split = split_subjects(subjects, test=0.2, val=0.2, strata=strata, seed=1)
    fold = split.folds[0]
    assert split.stratified and len(fold.test) == 8 and len(fold.val) == 8
    assert sum(strata[s] == "AD" for s in fold.test) == 2 and sum(strata[s] == "AD" for s in fold.val) == 2
    rare = {**strata, "s00": "FTD"}  # one subject of a class cannot fill three parts
    unstratified = split_subjects(subjects, strata=rare, seed=1)
    assert not unstratified.stratified and "too few" in unstratified.note


@pytest.mark.parametrize("count,sizes", [(2, (1, 0, 1)), (3, (1, 1, 1)), (5, (3, 1, 1))])
def test_tiny_subject_counts_still_give_train_and_test(count, sizes):
    fold = split_subjects([f"s{i}" for i in range(count)], test=0.2, val=0.2).folds[0]
    assert (len(fold.train), len(fold.val), len(fold.test)) == sizes


def test_label_fractions_are_nested_seeded_and_cover_every_class():
    train = tuple(f"s{i:03d}" for i in range(100))
    strata = {s: ("a", "b", "c")[i % 3] for i, s in enumerate(train)}
    small, large = (fraction_subset(train, f, seed=2, strata=strata, minimum=3) for f in (0.01, 0.1))
    assert len(small) == 3 and {strata[s] for s in small} == {"a", "b", "c"}
    assert set(small) <= set(large) and len(large) == 10
    assert fraction_subset(train, 0.1, seed=3, strata=strata) != large
    assert fraction_subset(train, 1.0, seed=2) == tuple(sorted(train))


def test_a_stored_split_reads_back_identically():
    split = split_subjects([f"s{i}" for i in range(12)], folds=3, seed=4)
    again = SubjectSplit.from_json(split.to_json())
    assert again == split and again.digest == split.digest
    with pytest.raises(ValueError, match="format version"):
        SubjectSplit.from_json(split.to_json().replace('"version": 1', '"version": 7'))


def test_the_protocol_selects_on_validation_and_reports_each_fraction(one_thread):
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 24), 2)  # two scans per subject, one label each
    embeddings = torch.randn(48, 3, 8, generator=torch.Generator().manual_seed(0))
    embeddings[:, :, 0] += 4.0 * torch.tensor(labels, dtype=torch.float32)[:, None]
    subjects = np.array([f"s{i // 2}" for i in range(48)])
    strata = {s: str(labels[i]) for i, s in enumerate(subjects)}
    split = split_subjects(list(subjects), strata=strata, seed=0)
    task = EmbeddingTask("classification", embeddings, torch.ones(48, 3, dtype=torch.bool), labels, 2, hidden_dim=16,
                         settings=FitSettings(epochs=20, learning_rates=(1e-3, 3e-2), eval_every=5))
    result = run_protocol(task, subjects, split, [0.25, 1.0], seeds=2, strata=strata, minimum=2, resamples=200)
    assert [f.fraction for f in result.fractions] == [0.25, 1.0]
    assert result.fractions[0].train_subjects < result.fractions[1].train_subjects == len(split.folds[0].train)
    full = result.fractions[1]
    assert full.metrics["macro_auc"] > 0.9 and full.interval.low <= np.mean(full.seed_scores) <= full.interval.high
    assert result.reference.selection.selected_on == "validation" and result.reference.selection.learning_rate in (1e-3, 3e-2)
    assert set(subjects[result.test_rows]) == set(split.folds[0].test)
