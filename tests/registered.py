"""A tiny encoder registered the way pretraining registers one, without Ray, in seconds.

``tiny_teacher_checkpoint`` writes a one-rank distributed checkpoint of the tiny CPU config whose teacher
differs from its initialisation; ``register_tiny_encoder`` exports and registers it with
``pipelines.register.register_run`` against a pretraining run in a local MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from braindino.config import load_config
from braindino.ssl import SelfDistillation
from braindino.volumes import PreprocessSpec
from infra.local.services import LocalMlflow
from pipelines.register import register_run
from pipelines.train.checkpoint import TrainState, save_checkpoint
from pipelines.train.config import PretrainConfig
from pipelines.train.data import ShardIndex
from tests.distributed import one_rank_group

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny-cpu.yaml"
EXPERIMENT = "braindino-pretrain"


def tiny_teacher_checkpoint(directory: Path, seed: int = 0) -> tuple[PretrainConfig, Path, dict[str, torch.Tensor]]:
    """``(config, checkpoint directory, teacher backbone state)`` of a perturbed tiny model."""
    with one_rank_group():
        config = load_config(PretrainConfig, TINY)
        torch.manual_seed(seed)
        model = SelfDistillation(config.model)
        with torch.no_grad():
            for p in model.teacher.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_checkpoint(directory, model, None, TrainState(stage="stage2", step=42))
        teacher = {k: v.clone() for k, v in model.teacher.backbone.state_dict().items()}
    return config, directory, teacher


def register_tiny_encoder(mlflow: LocalMlflow, directory: Path, preprocess: PreprocessSpec, seed: int = 0) -> str:
    """Register a tiny encoder (``seed`` picks its weights) as ``braindino-encoder`` @candidate; returns its version."""
    from mlflow.tracking import MlflowClient

    config, checkpoint, _ = tiny_teacher_checkpoint(directory / f"ckpt-{seed}", seed)
    client = MlflowClient(mlflow.tracking_uri)
    existing = client.get_experiment_by_name(EXPERIMENT)
    experiment = existing.experiment_id if existing else client.create_experiment(
        EXPERIMENT, artifact_location=f"{mlflow.artifact_root}/pretrain")
    run = client.create_run(experiment, tags={"data.manifest": "s3://bucket/ingest", "data.manifest_version": "1",
                                              "data.manifest_digest": "ab" * 32, "git.commit": "0" * 40,
                                              "data.summary": json.dumps({"slices": 64, "datasets": {"icbm152": 1}})})
    index = ShardIndex(root="s3://bucket/ingest", version=1, digest="ab" * 32, shards=(), n_slices=64, scans=(),
                       preprocess=preprocess,
                       licences={"icbm152": {"licence": "MNI ICBM152 templates", "citation": "Fonov 2011"}})
    return register_run(config, checkpoint, run.info.run_id, mlflow.tracking_uri, index)
