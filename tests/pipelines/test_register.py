"""Registration without Ray: a distributed checkpoint -> safetensors encoder -> MLflow registry, then promotion."""

from __future__ import annotations

import hashlib
import json

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from braindino.features import Encoder
from braindino.models.vit import VisionTransformer
from braindino.volumes import PreprocessSpec
from pipelines.registry import RegistryError, fetch_encoder
from pipelines.register import export_encoder, main as register_main, register_run
from pipelines.train.data import ShardIndex
from tests.registered import tiny_teacher_checkpoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def checkpoint(tmp_path):
    """A one-rank distributed checkpoint of the tiny model whose teacher differs from its initialisation."""
    return tiny_teacher_checkpoint(tmp_path / "ckpt")


def test_export_writes_the_teacher_backbone_as_safetensors_with_its_specs(tmp_path, checkpoint):
    config, directory, teacher = checkpoint
    assert (directory / "rng" / "rank0.json").exists() and not list(directory.rglob("*.pt"))  # no pickles
    weights = export_encoder(directory, config, tmp_path / "export", PreprocessSpec(slice_size=96))
    encoder = Encoder.from_checkpoint(weights)
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    assert json.loads((tmp_path / "export" / "preprocess.json").read_text())["slice_size"] == 96
    assert json.loads(weights.with_suffix(".json").read_text())["vit"]["size"] == "micro"


def test_register_sets_candidate_with_a_model_card_and_promote_sets_champion(checkpoint, mlflow_local):
    config, directory, teacher = checkpoint
    mlflow.create_experiment("braindino-pretrain", artifact_location=f"{mlflow_local.artifact_root}/pretrain")
    client = MlflowClient(mlflow_local.tracking_uri)
    experiment = client.get_experiment_by_name("braindino-pretrain").experiment_id
    run = client.create_run(experiment, tags={
        "data.manifest": "s3://bucket/ingest", "data.manifest_version": "3", "data.manifest_digest": "ab" * 32,
        "data.summary": json.dumps({"slices": 384, "datasets": {"icbm152": 2}}), "git.commit": "0" * 40})
    client.log_metric(run.info.run_id, "knn_probe_accuracy", 0.875, step=42)
    index = ShardIndex(root="s3://bucket/ingest", version=3, digest="ab" * 32, shards=(), n_slices=384, scans=(),
                       preprocess=json.loads(PreprocessSpec(spacing=(2.0, 2.0, 2.0)).to_json()),
                       licences={"icbm152": {"licence": "MNI ICBM152 templates", "citation": "Fonov 2011"}})
    version = register_run(config, directory, run.info.run_id, mlflow_local.tracking_uri, index)
    registered = client.get_model_version_by_alias("braindino-encoder", "candidate")
    assert str(registered.version) == version and registered.run_id == run.info.run_id
    card = registered.description
    for fact in ("ViT `micro`", "MNI ICBM152 templates", "Fonov 2011", '"spacing": [2.0, 2.0, 2.0]', "0.875", "Research only", "not for clinical",
                 "ab" * 32, "stage 2"):
        assert fact in card, fact
    assert registered.tags["intended_use"] == "research, not clinical"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("braindino-encoder", "champion")
    register_main(["promote", "--version", version, "--tracking-uri", mlflow_local.tracking_uri])
    assert str(client.get_model_version_by_alias("braindino-encoder", "champion").version) == version
    served = mlflow.pyfunc.load_model("models:/braindino-encoder@champion")
    slices = torch.randn(2, 1, 32, 32)
    backbone = VisionTransformer(config.model.vit).eval()
    backbone.load_state_dict(teacher)
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(served.predict(slices.numpy())), backbone(slices).cls)
    fetched = fetch_encoder("models:/braindino-encoder@champion", mlflow_local.tracking_uri, mlflow_local.root / "fetched")
    assert fetched.version == version and fetched.name == "braindino-encoder"
    assert fetched.weights_sha256 == hashlib.sha256(fetched.weights.read_bytes()).hexdigest()
    assert registered.tags["weights_sha256"] == fetched.weights_sha256
    assert fetched.preprocess.spacing == (2.0, 2.0, 2.0)
    with torch.no_grad():
        assert torch.equal(fetched.load().encode_slices(slices), backbone(slices).cls)
    with pytest.raises(RegistryError, match="names no registered version"):
        fetch_encoder("models:/braindino-encoder@nowhere", mlflow_local.tracking_uri)
