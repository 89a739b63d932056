"""One task of a suite, every encoder, under the protocol: samples -> stored split -> features -> heads -> rows.

Figures and predictions go under ``artifacts`` (a local folder the driver logs to MLflow), laid out as
``tasks/<task>/{task.yaml, split.json, curves.png, <encoder>/...}``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch

from braindino.evaluation.protocol import ProtocolResult, run_protocol
from braindino.evaluation.segmentation_task import KeptPrediction
from braindino.evaluation.splits import SubjectSplit
from braindino.features import volume_input
from braindino.heads import trainable_parameters
from datastore.files import write_bytes
from pipelines.evaluation.config import EvaluateConfig, TaskSpec
from pipelines.evaluation.data import TaskSamples, load_samples, task_split
from pipelines.evaluation.encoders import EncoderUnderTest, check_preprocess
from pipelines.evaluation.features import ExtractionReport, FeatureCache, extract_features
from pipelines.evaluation.report import (ResultRow, kaplan_meier_figure, label_efficiency_figure, overlay_figure,
                                         projection_figure, slug)
from pipelines.evaluation.runners import Runner, embedding_rows, embedding_runners, segmentation_runner, task_feature_spec


@dataclass
class TaskOutcome:
    task: TaskSpec
    samples: TaskSamples
    split: SubjectSplit
    split_reused: bool
    rows: list[ResultRow] = field(default_factory=list)
    extraction: dict[str, ExtractionReport] = field(default_factory=dict)  # encoder label -> report
    parameters: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # (encoder, head) -> count, share
    reference: dict[str, tuple[Runner, ProtocolResult]] = field(default_factory=dict)  # candidate's trained head


def read_text(uri: str, config: EvaluateConfig) -> str | None:
    fs, path = config.storage.resolve(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except (FileNotFoundError, OSError):
        return None


def evaluate_task(task: TaskSpec, task_file: str, config: EvaluateConfig, encoders: list[EncoderUnderTest],
                  artifacts: Path, device: str, log: Callable[[str], None] = print) -> TaskOutcome:
    samples = load_samples(task, config.manifest, config.storage)
    log(f"[evaluate] task {task.name} ({task.family}): {len(samples.scans)} scans of {len(set(samples.subjects))} "
        f"subjects from {samples.manifest_root} v{samples.manifest_version}; left out: {samples.dropped or 'none'}")
    split_uri = f"{config.output.rstrip('/')}/splits/{task.name}.json"
    split, reused = task_split(samples, read_text(split_uri, config))
    if not reused:
        write_bytes(*config.storage.resolve(split_uri), split.to_json().encode())
    log(f"[evaluate]   split {'reused' if reused else 'made and stored'} at {split_uri}: {len(split.folds)} fold(s), "
        f"{'stratified' if split.stratified else 'not stratified'}{' (' + split.note + ')' if split.note else ''}")
    folder = artifacts / "tasks" / task.name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(task_file, folder / "task.yaml")
    (folder / "split.json").write_text(split.to_json())
    outcome = TaskOutcome(task, samples, split, reused)
    fractions = config.protocol.fractions or task.fractions
    for encoder in encoders:
        check_preprocess(encoder, samples.manifest_root, samples.preprocess)
        spec = task_feature_spec(task, config.features.slices_per_volume, encoder.config.depth)
        cache, report = extract_features(samples.scans, encoder.encoder, spec, config.features, samples.manifest_root,
                                         config.storage)
        outcome.extraction[encoder.label] = report
        log(f"[evaluate]   {encoder.label}: features of {report.scans} scans, {report.cached} from the cache, "
            f"{report.encoded_scans} encoded ({report.encoded_slices} slices, {report.seconds:.1f} s)")
        where = folder / slug(encoder.label)
        where.mkdir(exist_ok=True)
        for runner in task_runners(samples, cache, encoder, config, device, where):
            result = run_protocol(runner.task, runner.subjects, split, fractions, config.protocol.seeds, runner.strata,
                                  runner.minimum, config.protocol.resamples, config.protocol.confidence)
            record(outcome, encoder, runner, result, where, log)
    (folder / "curves.png").write_bytes(label_efficiency_figure(outcome.rows, task.name))
    return outcome


def record(outcome: TaskOutcome, encoder: EncoderUnderTest, runner: Runner, result: ProtocolResult, where: Path,
           log: Callable[[str], None]) -> None:
    """Rows, parameter counts and the log line of one head; its Kaplan-Meier plot; the candidate's trained head."""
    task = outcome.task
    outcome.rows += result_rows(task, encoder.label, runner.head, result)
    best = result.fractions[-1]
    line = (f"[evaluate]   {encoder.label} / {runner.head}: {task.primary_metric} {best.metrics[task.primary_metric]:.3f} "
            f"[{best.interval.low:.3f}, {best.interval.high:.3f}] at {best.fraction:.0%} of the labels")
    if isinstance(result.reference.model, torch.nn.Module):
        count = trainable_parameters(result.reference.model)
        outcome.parameters[(encoder.label, runner.head)] = (count, count / encoder.parameters)
        line += f"; {count:,} trainable parameters, {100 * count / encoder.parameters:.2f} % of the encoder's"
        if encoder.candidate:
            outcome.reference[encoder.label] = (runner, result)
    log(line)
    if task.kind == "survival":
        time, event = (np.array([outcome.samples.targets[i][k] for i in result.test_rows]) for k in (0, 1))
        (where / f"kaplan_meier_{runner.head}.png").write_bytes(kaplan_meier_figure(
            time, event.astype(bool), result.test_outputs[:, 1].astype(bool), f"{task.name} / {encoder.label}"))


def task_runners(samples: TaskSamples, cache: FeatureCache, encoder: EncoderUnderTest, config: EvaluateConfig,
                 device: str, where: Path) -> list[Runner]:
    task = samples.task
    if task.kind == "segmentation":
        return [segmentation_runner(samples, cache, encoder, config, device, keep_prediction(samples, encoder, where))]
    rows = embedding_rows(samples, cache, task.head.tokens)
    vectors = rows.volume_embeddings()
    per_scan = np.stack([vectors[rows.scan_of_row == i].mean(0).numpy() for i in range(len(samples.scans))])
    labels = [samples.classes[t] if task.kind == "classification" else (f"event={t[1]}" if task.kind == "survival" else
              "n/a" if t is None else f"{t:.3g}") for t in samples.targets]
    (where / "projection.png").write_bytes(projection_figure(
        per_scan, {"dataset": [s.dataset for s in samples.scans], "label": labels}, f"{task.name} / {encoder.label}"))
    return embedding_runners(samples, rows, config, device)


def keep_prediction(samples: TaskSamples, encoder: EncoderUnderTest, where: Path) -> Callable[[KeptPrediction], None]:
    """The segmentation ``keep`` callback: the prediction as a NIfTI on the scan's grid, and an overlay PNG."""
    (where / "predictions").mkdir(exist_ok=True)
    preprocess = encoder.encoder.preprocess

    def keep(kept: KeptPrediction) -> None:
        scan_id = samples.scans[kept.row].scan_id
        nib.save(nib.Nifti1Image(kept.labels.labels, kept.labels.affine), where / "predictions" / f"{scan_id}.nii.gz")
        images = volume_input(kept.case.volume(), preprocess, 0).slices[:, 0].numpy()
        (where / f"overlay_{scan_id}.png").write_bytes(
            overlay_figure(images, kept.reference, kept.slices, f"{samples.task.name} / scan {scan_id[:12]}"))

    return keep


def result_rows(task: TaskSpec, encoder: str, head: str, result: ProtocolResult) -> list[ResultRow]:
    return [ResultRow(task.name, encoder, head, f.fraction, task.primary_metric, f.metrics[task.primary_metric],
                      f.interval.low, f.interval.high, f.interval.confidence, tuple(f.seed_scores), f.train_subjects,
                      f.test_subjects, f.interval.valid,
                      {k: v for k, v in f.metrics.items() if k != task.primary_metric}) for f in result.fractions]
