"""Typed configs of the evaluation job.

A task spec (``configs/tasks/NAME.yaml``, ``TaskSpec``) names the data (datasets of an ingest manifest),
the family (which fixes the kind of head: classification, regression, survival or segmentation), the
target (a label-table column, the scan's sequence, a derived slice position, or masks beside the scans),
the metric, the split policy, the label fractions and the head. An evaluation config
(``configs/evaluate/NAME.yaml``, ``EvaluateConfig``) names the encoder, the baselines, the suite of task
specs and the protocol settings.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from braindino.config import load_config
from braindino.heads.training import FitSettings
from ingest.storage import ObjectStoreConfig
from pipelines.tracking import TrackingConfig

Kind = Literal["classification", "regression", "survival", "segmentation"]
FAMILIES: dict[str, Kind] = {
    "tumour_segmentation": "segmentation",
    "tissue_segmentation": "segmentation",
    "neuro_classification": "classification",
    "molecular_status": "classification",
    "sequence_classification": "classification",
    "brain_age": "regression",
    "stroke_time": "regression",
    "derived_regression": "regression",
    "survival": "survival",
}
METRICS: dict[str, tuple[str, ...]] = {  # the first is the default
    "classification": ("macro_auc", "accuracy"),
    "regression": ("mae", "rmse"),
    "survival": ("c_index",),
    "segmentation": ("dice", "hd95", "nsd"),
}


@dataclass(frozen=True)
class TaskData:
    datasets: list[str]  # datasets of the manifest that hold the task's scans
    manifest: str = ""  # ingest output root; empty: the evaluation config's ``manifest``
    sequences: list[str] = field(default_factory=list)  # keep only these sequences (empty: every sequence)


@dataclass(frozen=True)
class MaskSource:
    """Reference label volumes stored beside the scans: ``re.sub(pattern, replacement, source_key)`` under ``source``
    (by default the scan's dataset source, as the ingest recorded it)."""

    pattern: str
    replacement: str
    labels: dict[str, str]  # label value -> name; "0" is background
    source: str = ""
    tolerance_mm: float = 2.0  # the NSD tolerance

    def __post_init__(self) -> None:
        re.compile(self.pattern)
        if "0" not in self.labels or len(self.labels) < 2:
            raise ValueError("masks.labels needs the background '0' and at least one label")

    def label_values(self) -> dict[int, str]:
        return {int(value): name for value, name in self.labels.items()}


@dataclass(frozen=True)
class Target:
    source: Literal["label", "sequence", "axial_position", "mask"] = "label"
    label: str = ""  # the label-table column (source "label")
    classes: list[str] = field(default_factory=list)  # class order; default: the sorted values found
    time: str = ""  # survival: the label-table columns of follow-up time and event (1/0, true/false)
    event: str = ""
    unit: str = ""  # regression: the target's unit
    masks: MaskSource | None = None  # source "mask"


@dataclass(frozen=True)
class SplitPolicy:
    test: float = 0.2
    val: float = 0.2
    folds: int = 0  # >0: cross-validation over subjects (every subject tested once)
    stratify: bool = True
    seed: int = 0


@dataclass(frozen=True)
class HeadSettings:
    tokens: Literal["cls", "cls+patch_mean"] = "cls"
    pooling: Literal["mean", "attention"] = "mean"
    hidden_dim: int = 768
    blocks: int = 4  # segmentation: patch tokens of this many evenly spaced blocks
    width: int = 128  # segmentation decoder channels
    epochs: int = 100
    learning_rates: list[float] = field(default_factory=lambda: [1e-3])
    weight_decay: float = 1e-4
    batch_size: int = 64
    eval_every: int = 5

    def fit_settings(self) -> FitSettings:
        return FitSettings(self.epochs, tuple(self.learning_rates), self.weight_decay, self.batch_size, self.eval_every)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    data: TaskData
    target: Target = field(default_factory=Target)
    description: str = ""
    metric: str = ""  # default: the kind's first metric
    split: SplitPolicy = field(default_factory=SplitPolicy)
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    head: HeadSettings = field(default_factory=HeadSettings)
    knn: bool = True  # classification: also the kNN probe
    note: str = ""  # a caveat the report repeats (e.g. how little a tiny test set says)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name):
            raise ValueError(f"task name {self.name!r} must be lower-case letters, digits, '-' or '_' (it names a model)")
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {sorted(FAMILIES)}")
        if self.metric and self.metric not in METRICS[self.kind]:
            raise ValueError(f"metric {self.metric!r} does not fit a {self.kind} task; choose one of {list(METRICS[self.kind])}")
        target = self.target
        needs = {"segmentation": target.source == "mask" and target.masks is not None,
                 "survival": target.source == "label" and bool(target.time and target.event),
                 "classification": target.source in ("label", "sequence") and (target.source == "sequence" or bool(target.label)),
                 "regression": target.source == "axial_position" or (target.source == "label" and bool(target.label))}
        if not needs[self.kind]:
            raise ValueError(f"a {self.kind} task needs target: {TARGET_HINTS[self.kind]}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")

    @property
    def kind(self) -> Kind:
        return FAMILIES[self.family]

    @property
    def primary_metric(self) -> str:
        return self.metric or METRICS[self.kind][0]

    @property
    def unit(self) -> Literal["volume", "slice"]:
        return "slice" if self.target.source == "axial_position" else "volume"


TARGET_HINTS = {
    "segmentation": "{source: mask, masks: {pattern, replacement, labels}}",
    "survival": "{source: label, time: COLUMN, event: COLUMN}",
    "classification": "{source: label, label: COLUMN} or {source: sequence}",
    "regression": "{source: label, label: COLUMN, unit: ...} or {source: axial_position}",
}


def load_task(path: str | Path) -> tuple[TaskSpec, str]:
    """A task spec from its YAML file, and the SHA-256 of the file (recorded with the heads it trains)."""
    text = Path(path).read_text() if Path(path).exists() else ""
    return load_config(TaskSpec, path), hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class FeatureSettings:
    cache: str = ".local/evaluate/features"  # folder or s3://bucket/prefix: features by encoder and scan digest
    slices_per_volume: int = 128  # evenly spaced axial slices per scan (segmentation uses every slice)
    batch_size: int = 32  # slices per encoder forward
    concurrency: int = 1  # encoder actors
    use_gpu: bool = False  # one GPU per actor
    cpus_per_actor: float = 1.0


@dataclass(frozen=True)
class ProtocolSettings:
    seeds: int = 3  # repeats of each label fraction
    resamples: int = 1000  # bootstrap resamples of the test subjects
    confidence: float = 0.95
    fractions: list[float] = field(default_factory=list)  # set: replaces every task's fractions


@dataclass(frozen=True)
class KnnSettings:
    k: list[int] = field(default_factory=lambda: [10, 20])
    temperature: float = 0.07


@dataclass(frozen=True)
class HeadRegistration:
    enabled: bool = True  # register the candidate encoder's heads as braindino-head-TASK
    alias: str = "candidate"


@dataclass(frozen=True)
class EvaluateConfig:
    name: str = "evaluate"
    encoder: str = "models:/braindino-encoder@candidate"  # registry URI or an export folder
    baselines: list[str] = field(default_factory=lambda: ["random-init"])  # "random-init", registry URIs, folders
    tasks: list[str] = field(default_factory=list)  # task spec files: the suite
    manifest: str = ".local/ingest"  # the ingest output root of tasks that name none
    storage: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)  # manifest, masks, cache, output
    output: str = ".local/evaluate"  # splits/ (stored and reused) and per-run files; a folder or s3://
    features: FeatureSettings = field(default_factory=FeatureSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)
    register: HeadRegistration = field(default_factory=HeadRegistration)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="braindino-evaluate"))
    threads: int = 2  # torch threads of the driver, where heads train
    ray_cpus: int = 2  # local Ray only; ignored when RAY_ADDRESS names a cluster
