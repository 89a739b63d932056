"""Heads out of an evaluation: the export of the candidate encoder's head per task, its model card, and its
registration as ``braindino-head-TASK`` (MLflow models from code; weights stay safetensors)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from braindino.evaluation.protocol import Fitted, FractionResult
from braindino.evaluation.splits import SubjectSplit
from braindino.features import FeatureSpec
from braindino.heads import EncoderRef, HeadSpec, architecture_of, save_head, trainable_parameters
from pipelines.evaluation.config import TaskSpec
from pipelines.evaluation.data import TaskSamples
from pipelines.evaluation.encoders import EncoderUnderTest
from pipelines.registry import DIGEST_TAG, ENCODER_DIGEST_TAG, head_model_name, sha256_file

HEAD_MODEL_CODE = Path(__file__).resolve().with_name("head_model.py")
AXIAL_POSITION_UNIT = "fraction of the scan's axial extent (0: lowest kept slice, 1: highest); derived from the data"


def output_spec(samples: TaskSamples, fitted: Fitted) -> dict[str, Any]:
    task = samples.task
    if task.kind == "classification":
        return {"classes": list(samples.classes)}
    if task.kind == "regression":
        unit = AXIAL_POSITION_UNIT if task.target.source == "axial_position" else task.target.unit
        return {"unit": unit, "target_mean": fitted.extra["target_mean"], "target_std": fitted.extra["target_std"]}
    if task.kind == "survival":
        return {"risk": "log relative hazard: higher means an earlier event",
                "train_median_risk": fitted.extra["train_median_risk"]}
    return {"labels": dict(task.target.masks.labels)}


def export_head(folder: Path, samples: TaskSamples, fitted: Fitted, encoder: EncoderUnderTest, features: FeatureSpec,
                result: FractionResult) -> HeadSpec:
    """Write the head trained on every training subject (seed 0, fold 0) as an export folder."""
    task, fetched = samples.task, encoder.encoder
    module = fitted.model.cpu()
    encoder_parameters = encoder.parameters
    spec = HeadSpec(
        task=task.name, family=task.family, kind=task.kind, architecture=architecture_of(module), features=features,
        output=output_spec(samples, fitted), encoder=EncoderRef(fetched.name, fetched.version, fetched.weights_sha256),
        preprocess=json.loads(fetched.preprocess.to_json()), unit=task.unit,
        extra={"trainable_parameters": trainable_parameters(module), "encoder_parameters": encoder_parameters,
               "selection": dataclasses.asdict(fitted.selection) if fitted.selection else None,
               "test": {"metric": task.primary_metric, "value": result.metrics[task.primary_metric],
                        "interval": [result.interval.low, result.interval.high], "confidence": result.interval.confidence}})
    save_head(folder, module, spec)
    return spec


def model_card(spec: HeadSpec, samples: TaskSamples, split: SubjectSplit, encoder: EncoderUnderTest, run_id: str) -> str:
    task, extra = samples.task, spec.extra
    fold = split.folds[0]
    test = extra["test"]
    lines = [
        f"# {head_model_name(task.name)}",
        "",
        f"{task.description or task.name} ({task.family}, a {task.kind} head, one prediction per {spec.unit}).",
        "",
        "## Encoder",
        f"Trained on the frozen features of {encoder.label} (weights SHA-256 `{spec.encoder.weights_sha256}`); it refuses "
        "to load on any other encoder.",
        "",
        "## Architecture",
        f"`{json.dumps(spec.architecture)}`: {extra['trainable_parameters']:,} trainable parameters, "
        f"{100 * extra['trainable_parameters'] / extra['encoder_parameters']:.2f} % of the encoder's "
        f"{extra['encoder_parameters']:,}. Features: `{json.dumps(spec.features.to_dict())}`.",
        "",
        "## Data and split",
        f"Manifest `{samples.manifest_root}` v{samples.manifest_version}, datasets {', '.join(task.data.datasets)}: "
        f"{len(samples.scans)} scans of {len(set(samples.subjects))} subjects (left out: {samples.dropped or 'none'}).",
        f"Split by subject (seed {split.seed}, {'stratified' if split.stratified else 'not stratified'}"
        f"{': ' + split.note if split.note else ''}), {len(split.folds)} fold(s); this head: fold 1 with "
        f"{len(fold.train)} training, {len(fold.val)} validation and {len(fold.test)} test subjects. "
        f"Selection: {extra['selection']}.",
        "",
        "## Test result",
        f"{test['metric']} {test['value']:.4f}, {100 * test['confidence']:.0f} % bootstrap interval over test subjects "
        f"[{test['interval'][0]:.4f}, {test['interval'][1]:.4f}] (mean over seeds; evaluation run `{run_id}`).",
        *([f"", f"Note: {task.note}"] if task.note else []),
        "",
        "## Output",
        f"`{json.dumps(spec.output)}`",
        "",
        "## Intended use",
        "Research only. Not a medical device; not for diagnosis, treatment or any decision about a patient.",
    ]
    return "\n".join(lines) + "\n"


def register_head(folder: Path, spec: HeadSpec, card: str, tags: dict[str, str], tracking_uri: str, alias: str) -> str:
    """Log the export as a models-from-code pyfunc in the active run, register it, tag it; returns the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = head_model_name(spec.task)
    (folder / "MODEL_CARD.md").write_text(card)
    info = mlflow.pyfunc.log_model(name=f"head-{spec.task}", python_model=str(HEAD_MODEL_CODE),
                                   artifacts={"head": str(folder)}, registered_model_name=name,
                                   pip_requirements=["torch==2.13.0", "safetensors", "braindino"])
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri)
    client.update_registered_model(name, description=f"BrainDINO head for task {spec.task} (research use only).")
    client.update_model_version(name, version, description=card)
    for key, value in {DIGEST_TAG: sha256_file(folder / "head.safetensors"), ENCODER_DIGEST_TAG: spec.encoder.weights_sha256,
                       "encoder.name": spec.encoder.name, "encoder.version": spec.encoder.version, "task": spec.task,
                       "family": spec.family, "kind": spec.kind, "intended_use": "research, not clinical", **tags}.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return version
