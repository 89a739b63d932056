"""Subject-level splits: who trains, who selects the model, who is tested, and the label-fraction subsets.

Everything is decided per subject, never per scan or slice, so one person's scans always land on one
side. A split is one or more folds of ``train`` / ``val`` / ``test`` subject lists; ``SubjectSplit``
round-trips through JSON so an evaluation stores it and every later evaluation reuses it.

Stratification deals subjects in turn, stratum by stratum (each stratum shuffled by the seed), into a
repeating pattern of parts whose proportions follow the requested fractions; it is used when every
stratum holds at least as many subjects as there are parts, and the split records when it was not.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

SPLIT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class SubjectSplit:
    folds: tuple[Fold, ...]
    seed: int
    stratified: bool
    note: str = ""
    version: int = SPLIT_FORMAT_VERSION

    @property
    def subjects(self) -> set[str]:
        return {s for fold in self.folds for part in (fold.train, fold.val, fold.test) for s in part}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SubjectSplit:
        raw = json.loads(text)
        if raw.get("version") != SPLIT_FORMAT_VERSION:
            raise ValueError(f"split format version {raw.get('version')!r}; this code reads {SPLIT_FORMAT_VERSION}")
        folds = tuple(Fold(**{k: tuple(v) for k, v in fold.items()}) for fold in raw.pop("folds"))
        return cls(folds=folds, **raw)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def deal(subjects: list[str], strata: dict[str, str], pattern: list[int], seed: int) -> dict[str, int]:
    """Assign each subject a part from the repeating ``pattern``, dealing stratum by stratum (shuffled)."""
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for stratum in sorted(set(strata[s] for s in subjects)):
        members = sorted(s for s in subjects if strata[s] == stratum)
        order += [members[i] for i in rng.permutation(len(members))]
    return {subject: pattern[i % len(pattern)] for i, subject in enumerate(order)}


def stratifiable(subjects: list[str], strata: dict[str, str] | None, parts: int) -> bool:
    if not strata:
        return False
    counts: dict[str, int] = {}
    for subject in subjects:
        counts[strata[subject]] = counts.get(strata[subject], 0) + 1
    return len(counts) > 1 and min(counts.values()) >= parts


def split_subjects(subjects: list[str], test: float = 0.2, val: float = 0.2, folds: int = 0,
                   strata: dict[str, str] | None = None, seed: int = 0) -> SubjectSplit:
    """A split of ``subjects``: one train/val/test split by fractions (``folds=0``) or ``folds``-fold cross-validation.

    In fold ``k`` of a cross-validation, part ``k`` is tested and part ``k+1`` selects the model (with at
    least three folds; with two, nothing is left to select on and the fold says so by an empty ``val``).
    ``strata`` (subject -> class) stratifies when every class can fill every part.
    """
    subjects = sorted(set(subjects))
    if len(subjects) < 2:
        raise ValueError(f"a split needs at least two subjects, got {len(subjects)}")
    parts = folds if folds else 3
    stratified = stratifiable(subjects, strata, parts)
    note = "" if stratified or not strata else "too few subjects per class to stratify"
    chosen_strata = strata if stratified else {s: "" for s in subjects}
    if folds:
        if not 2 <= folds <= len(subjects):
            raise ValueError(f"{folds} folds need between 2 and {len(subjects)} subjects per fold count")
        part = deal(subjects, chosen_strata, list(range(folds)), seed)
        made = []
        for k in range(folds):
            val_part = (k + 1) % folds if folds >= 3 else None
            made.append(Fold(train=tuple(s for s in subjects if part[s] not in (k, val_part)),
                             val=tuple(s for s in subjects if part[s] == val_part),
                             test=tuple(s for s in subjects if part[s] == k)))
        return SubjectSplit(tuple(made), seed, stratified, note)
    if not (0 < test < 1 and 0 <= val < 1 and test + val < 1):
        raise ValueError(f"split fractions test={test} val={val} must be positive and sum below 1")
    part = deal(subjects, chosen_strata, fraction_pattern(test, val), seed)
    fill_empty_parts(part, with_val=val > 0 and len(subjects) >= 3)
    names = {0: "test", 1: "val", 2: "train"}
    chosen = {name: tuple(s for s in subjects if part[s] == index) for index, name in names.items()}
    return SubjectSplit((Fold(**chosen),), seed, stratified, note)


def fraction_pattern(test: float, val: float) -> list[int]:
    """A short repeating pattern of parts (0 test, 1 val, 2 train) in about the requested proportions."""
    length = max(3, math.ceil(1 / min(f for f in (test, val) if f > 0) - 1e-9))
    n_test, n_val = max(1, round(test * length)), round(val * length)
    return [0] * n_test + [1] * n_val + [2] * max(1, length - n_test - n_val)


def fill_empty_parts(part: dict[str, int], with_val: bool) -> None:
    """Keep every needed part non-empty on tiny subject counts: train first (val gives a subject up before
    test does), then test, then val (from train), each only from a part that keeps a subject."""
    def members(index: int) -> list[str]:
        return sorted(s for s, p in part.items() if p == index)

    for needed, donors in ((2, (1, 0)), (0, (2, 1)), *(((1, (2,)),) if with_val else ())):
        if members(needed):
            continue
        for donor in donors:
            if len(members(donor)) > (0 if needed == 2 and donor == 1 else 1):
                part[members(donor)[0]] = needed
                break


def fraction_subset(train: tuple[str, ...], fraction: float, seed: int, strata: dict[str, str] | None = None,
                    minimum: int = 1) -> tuple[str, ...]:
    """The training subjects kept at label ``fraction`` for repeat ``seed``: at least ``minimum`` of them.

    Subjects are dealt class by class in turn (each class shuffled by the seed), so any prefix covers
    the classes as evenly as it can and the subsets of one seed are nested as the fraction grows.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"a label fraction must lie in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for subject in sorted(train):
        groups.setdefault(strata[subject] if strata else "", []).append(subject)
    queues = [[members[i] for i in rng.permutation(len(members))] for _, members in sorted(groups.items())]
    order = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
    count = min(len(order), max(minimum, round(fraction * len(order))))
    return tuple(sorted(order[:count]))


def assert_disjoint(fold: Fold) -> None:
    """Raise when any subject sits in two parts of a fold."""
    parts = {"train": set(fold.train), "val": set(fold.val), "test": set(fold.test)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = parts[a] & parts[b]
        if shared:
            raise AssertionError(f"subjects {sorted(shared)} are in both {a} and {b}")


def subject_rows(subjects: np.ndarray, chosen: tuple[str, ...] | set[str]) -> np.ndarray:
    """Indices of the rows whose subject is in ``chosen``."""
    return np.flatnonzero(np.isin(np.asarray(subjects), list(chosen)))


__all__ = ["Fold", "SubjectSplit", "assert_disjoint", "fraction_subset", "split_subjects", "subject_rows"]
