"""A task's samples: the manifest's scans of its datasets joined to their targets, and the stored split.

Scans come from the latest committed manifest (status ok), targets from its label table (keyed by dataset
and subject pseudonym), from the scan's sequence, or from masks stored beside the scans. A scan without a
usable target is left out and counted by reason; a task left with nothing stops with a message.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from braindino.evaluation.splits import SubjectSplit, split_subjects
from datastore.manifest import ManifestMissing, ManifestStore, ScanRow
from datastore.objectstore import ObjectStoreConfig
from pipelines.evaluation.config import TaskSpec

TRUE, FALSE = {"1", "true", "yes", "dead", "event"}, {"0", "false", "no", "alive", "censored"}


@dataclass
class TaskSamples:
    """One row per scan: ``scans[i]`` (manifest row) and ``targets[i]``; ``dropped`` counts scans left out by reason."""

    task: TaskSpec
    manifest_root: str
    manifest_version: int
    preprocess: dict[str, Any] | None
    scans: list[ScanRow]
    targets: list[Any]
    classes: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    dataset_sources: dict[str, str] = field(default_factory=dict)  # where each dataset's raw scans are

    def mask_location(self, row: int) -> tuple[str, str]:
        """``(source, key)`` of the reference mask of scan ``row`` (segmentation tasks)."""
        dataset = self.scans[row].dataset
        source = self.task.target.masks.source or self.dataset_sources.get(dataset, "")
        if not source:
            raise ValueError(f"task {self.task.name}: the manifest records no source for dataset {dataset}; set "
                             "target.masks.source (or ingest the dataset again to record it)")
        return source, self.targets[row]

    @property
    def subjects(self) -> np.ndarray:
        return np.array([scan.subject for scan in self.scans])

    def strata(self) -> dict[str, str] | None:
        """Subject -> stratum for splitting: the class (classification), the event (survival), else None."""
        if not self.task.split.stratify or self.task.kind not in ("classification", "survival"):
            return None
        return {scan.subject: str(target if self.task.kind == "classification" else target[1])
                for scan, target in zip(self.scans, self.targets)}


def load_samples(task: TaskSpec, default_manifest: str, storage: ObjectStoreConfig) -> TaskSamples:
    root = task.data.manifest or default_manifest
    manifest = ManifestStore(root, storage).latest()
    if manifest.version == 0:
        raise ManifestMissing(f"task {task.name}: {root} holds no committed manifest: ingest the task's datasets "
                              "into it first, or point manifest at an ingest output root")
    present = {row.dataset for row in manifest.current_scans()}
    missing = sorted(set(task.data.datasets) - present)
    if missing:
        raise ValueError(f"task {task.name}: datasets {missing} are not in the manifest at {root} "
                         f"(it holds {sorted(present)}); ingest them or correct data.datasets")
    labels = {(row["dataset"], row["subject"], row["label"]): row["value"] for row in manifest.labels.to_pylist()}
    dropped: Counter[str] = Counter()
    scans, targets = [], []
    for scan in sorted(manifest.current_scans(), key=lambda r: (r.dataset, r.source_key)):
        if scan.status != "ok" or scan.dataset not in task.data.datasets:
            continue
        if task.data.sequences and scan.sequence not in task.data.sequences:
            continue
        target, reason = scan_target(task, scan, labels)
        if reason:
            dropped[reason] += 1
            continue
        scans.append(scan)
        targets.append(target)
    classes = []
    if task.kind == "classification":
        classes = list(task.target.classes) or sorted(set(targets))
        keep = [i for i, t in enumerate(targets) if t in classes]
        dropped["class not in target.classes"] += len(targets) - len(keep)
        scans, targets = [scans[i] for i in keep], [classes.index(targets[i]) for i in keep]
    if len({s.subject for s in scans}) < 2:
        raise ValueError(f"task {task.name}: {len(scans)} usable scans from fewer than two subjects in {root} "
                         f"(left out: {dict(dropped) or 'none'}); nothing can be split into train and test")
    return TaskSamples(task, root, manifest.version, manifest.preprocess, scans, targets, classes,
                       {k: v for k, v in dropped.items() if v},
                       {name: entry.get("source", "") for name, entry in manifest.datasets.items()})


def scan_target(task: TaskSpec, scan: ScanRow, labels: dict[tuple[str, str, str], str]) -> tuple[Any, str]:
    """``(target, "")`` for a usable scan, or ``(None, reason)``."""
    target = task.target
    if target.source == "sequence":
        return scan.sequence, ""
    if target.source == "axial_position":
        return None, ""  # per slice, from the features' axial indices
    if target.source == "mask":
        key, count = re.subn(target.masks.pattern, target.masks.replacement, scan.source_key)
        return (key, "") if count else (None, "no mask: masks.pattern does not match the scan's key")

    def value(column: str) -> str | None:
        return labels.get((scan.dataset, scan.subject, column))

    if task.kind == "survival":
        time, event = value(target.time), value(target.event)
        if time is None or event is None:
            return None, f"no {target.time}/{target.event} label"
        try:
            flag = {**dict.fromkeys(TRUE, True), **dict.fromkeys(FALSE, False)}[event.strip().lower()]
            return (float(time), flag), ""
        except (KeyError, ValueError):
            return None, f"unreadable {target.time}/{target.event} label"
    raw = value(target.label)
    if raw is None or raw.strip() == "":
        return None, f"no {target.label} label"
    if task.kind == "regression":
        try:
            return float(raw), ""
        except ValueError:
            return None, f"{target.label} label is not a number"
    return raw.strip(), ""


def task_split(samples: TaskSamples, stored: str | None) -> tuple[SubjectSplit, bool]:
    """The task's split: the stored one (JSON) when it covers exactly these subjects, else a new one.

    Returns ``(split, reused)``. A stored split naming other subjects stops the run rather than silently
    re-splitting: a new split would change what every earlier result was tested on.
    """
    subjects = sorted(set(samples.subjects))
    if stored is not None:
        split = SubjectSplit.from_json(stored)
        if split.subjects != set(subjects):
            added, gone = sorted(set(subjects) - split.subjects), sorted(split.subjects - set(subjects))
            raise ValueError(f"task {samples.task.name}: the stored split does not cover these subjects "
                             f"({len(added)} new, {len(gone)} gone); delete the stored split to make a new one "
                             "(earlier results were tested on the old one)")
        return split, True
    policy = samples.task.split
    return split_subjects(subjects, policy.test, policy.val, policy.folds, samples.strata(), policy.seed), False
