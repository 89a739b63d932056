"""From a task's samples and an encoder's cached features to the protocol's task runners.

Rows are scans, or slices for slice-level targets (``axial_position``: the slice's place between the
scan's lowest and highest kept slice, 0 to 1, a target derived from the data). Classification tasks get
the trained head and one kNN probe per ``k``; segmentation tasks a decoder over multi-block patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

from braindino.evaluation.segmentation_task import KeptPrediction, ScanCase, ScanCases, SegmentationTask
from braindino.evaluation.tasks import EmbeddingTask, KnnProbe
from braindino.features import FeatureSpec, VolumeFeatures, evenly_spaced_blocks, masked_mean
from ingest.readers import read_scan
from ingest.sources import SourceObject, ScanUnit, read_payload
from ingest.storage import ObjectStoreConfig
from ingest.writers.zarr_store import open_root, read_volume
from pipelines.evaluation.config import EvaluateConfig, TaskSpec
from pipelines.evaluation.data import TaskSamples
from pipelines.evaluation.encoders import EncoderUnderTest
from pipelines.evaluation.features import FeatureCache


def task_feature_spec(task: TaskSpec, slices_per_volume: int, depth: int) -> FeatureSpec:
    if task.kind == "segmentation":
        return FeatureSpec(task.head.tokens, 0, evenly_spaced_blocks(depth, task.head.blocks))
    return FeatureSpec(task.head.tokens, slices_per_volume)


@dataclass
class Runner:
    """One head of a task under the protocol: its name in reports, the runner, and how rows map to subjects."""

    head: str
    task: Any  # EmbeddingTask | KnnProbe | SegmentationTask
    subjects: np.ndarray  # per row
    strata: dict[str, str] | None
    minimum: int  # training subjects at the smallest label fraction


@dataclass
class EmbeddingRows:
    embeddings: torch.Tensor  # [n, S, D]
    mask: torch.Tensor  # [n, S]
    targets: np.ndarray
    scan_of_row: np.ndarray

    def volume_embeddings(self) -> torch.Tensor:
        return masked_mean(self.embeddings, self.mask)


def embedding_rows(samples: TaskSamples, cache: FeatureCache, tokens: str) -> EmbeddingRows:
    """Slice embeddings per row, padded: one row per scan, or per slice for the derived axial position."""
    per_scan = [cache.read(scan["content_digest"]) for scan in samples.scans]
    if samples.task.unit == "slice":
        embeddings = torch.cat([f.slice_embeddings(tokens) for f in per_scan])[:, None]
        positions = [(f.z - f.z.min()) / max(int(f.z.max() - f.z.min()), 1) for f in per_scan]
        scan_of_row = np.concatenate([np.full(len(f.z), i) for i, f in enumerate(per_scan)])
        return EmbeddingRows(embeddings, torch.ones(len(embeddings), 1, dtype=torch.bool),
                             np.concatenate(positions).astype(np.float64), scan_of_row)
    longest = max(len(f.z) for f in per_scan)
    dim = per_scan[0].slice_embeddings(tokens).shape[1]
    embeddings = torch.zeros(len(per_scan), longest, dim)
    mask = torch.zeros(len(per_scan), longest, dtype=torch.bool)
    for i, features in enumerate(per_scan):
        count = len(features.z)
        embeddings[i, :count], mask[i, :count] = features.slice_embeddings(tokens), True
    targets = np.array(samples.targets, dtype=np.float64 if samples.task.kind != "classification" else np.int64)
    return EmbeddingRows(embeddings, mask, targets, np.arange(len(per_scan)))


def embedding_runners(samples: TaskSamples, rows: EmbeddingRows, config: EvaluateConfig, device: str) -> list[Runner]:
    task = samples.task
    subjects = samples.subjects[rows.scan_of_row]
    strata = samples.strata()
    n_outputs = len(samples.classes) if task.kind == "classification" else 1
    minimum = max(1, n_outputs) if task.kind == "classification" else 2
    head = EmbeddingTask(task.kind, rows.embeddings, rows.mask, rows.targets, n_outputs, task.head.hidden_dim,
                         task.head.pooling, task.head.fit_settings(), device)
    runners = [Runner(f"mlp-{task.head.pooling}", head, subjects, strata, minimum)]
    if task.kind == "classification" and task.knn:
        runners += [Runner(f"knn-k{k}", KnnProbe(rows.embeddings, rows.mask, rows.targets, n_outputs, k,
                                                 config.knn.temperature), subjects, strata, minimum)
                    for k in config.knn.k]
    return runners


def read_mask(source: str, key: str, storage: ObjectStoreConfig) -> np.ndarray:
    """A reference label volume stored at ``source/key``, as integer labels on its own grid."""
    unit = ScanUnit("masks", key, (SourceObject(key, 0, ""),))
    scan = read_scan(read_payload(source, unit, storage))
    return np.rint(scan.data).astype(np.int16)


def segmentation_runner(samples: TaskSamples, cache: FeatureCache, encoder: EncoderUnderTest, config: EvaluateConfig,
                        device: str, keep: Callable[[KeptPrediction], None] | None) -> Runner:
    """The decoder runner; ``keep`` receives the predictions the protocol keeps."""
    task, masks = samples.task, samples.task.target.masks
    volumes = open_root(samples.manifest_root, config.storage, mode="r")
    loaders = []
    for row, scan in enumerate(samples.scans):
        volume = lru_cache(maxsize=1)(lambda path=scan["zarr_path"]: read_volume(volumes, path))
        features: Callable[[], VolumeFeatures] = lru_cache(maxsize=1)(lambda d=scan["content_digest"]: cache.read(d))
        reference = lru_cache(maxsize=1)(lambda where=samples.mask_location(row): read_mask(*where, config.storage))
        loaders.append(ScanCase(scan["subject"], volume, features, reference))
    preprocess = encoder.encoder.preprocess
    cases = ScanCases(loaders, masks.label_values(), preprocess.slice_size, masks.tolerance_mm, keep)
    first = loaders[0].features()
    segmentation = SegmentationTask(cases, len(loaders), first.blocks.shape[-1], first.blocks.shape[1],
                                    encoder.config.patch_size, task.head.width,
                                    task.head.fit_settings(), device)
    return Runner("decoder", segmentation, samples.subjects, None, 1)
