"""Registration without Ray: a distributed checkpoint -> safetensors encoder -> MLflow registry, then promotion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from braindino.config import load_config
from braindino.features import Encoder
from braindino.models.vit import VisionTransformer
from braindino.volumes import PreprocessSpec
from pipelines.failures import UserFacingError
from pipelines.registry import RegistryError, fetch_encoder
from pipelines.register import RegisterJobConfig, export_encoder, main as register_main, register_run, stage_summaries
from pipelines.train.config import PretrainConfig
from pipelines.train.data import ShardIndex
from tests.registered import TINY, tiny_teacher_checkpoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def checkpoint(tmp_path):
    """A one-rank distributed checkpoint of the tiny model whose teacher differs from its initialisation."""
    return tiny_teacher_checkpoint(tmp_path / "ckpt")


def test_export_writes_the_teacher_backbone_as_safetensors_with_its_specs(tmp_path, checkpoint):
    config, directory, teacher = checkpoint
    assert (directory / "rng" / "rank0.json").exists() and not list(directory.rglob("*.pt"))  # no pickles
    weights = export_encoder(directory, config.model.vit, tmp_path / "export", PreprocessSpec(slice_size=96))
    encoder = Encoder.from_checkpoint(weights)
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    assert json.loads((tmp_path / "export" / "preprocess.json").read_text())["slice_size"] == 96
    assert json.loads(weights.with_suffix(".json").read_text())["vit"]["size"] == "micro"


def test_register_sets_candidate_with_a_model_card_and_promote_sets_champion(checkpoint, mlflow_local, no_unpickling):
    config, directory, teacher = checkpoint
    mlflow.create_experiment("braindino-pretrain", artifact_location=f"{mlflow_local.artifact_root}/pretrain")
    client = MlflowClient(mlflow_local.tracking_uri)
    experiment = client.get_experiment_by_name("braindino-pretrain").experiment_id
    run = client.create_run(experiment, tags={
        "data.manifest": "s3://bucket/ingest", "data.manifest_version": "3", "data.manifest_digest": "ab" * 32,
        "git.commit": "0" * 40, "git.dirty": "false"})
    client.log_metric(run.info.run_id, "knn_probe_accuracy", 0.875, step=42)
    scans = tuple({"dataset": "icbm152", "sequence": sequence, "subject": "icbm152", "slices_kept": 192}
                  for sequence in ("T1w", "T2w"))
    index = ShardIndex(root="s3://bucket/ingest", version=3, digest="ab" * 32, shards=(), n_slices=384, scans=scans,
                       preprocess=PreprocessSpec(spacing=(2.0, 2.0, 2.0)),
                       licences={"icbm152": {"licence": "MNI ICBM152 templates", "citation": "Fonov 2011"}})
    version = register_run(config, directory, run.info.run_id, mlflow_local.tracking_uri, index)
    registered = client.get_model_version_by_alias("braindino-encoder", "candidate")
    assert str(registered.version) == version and registered.run_id == run.info.run_id
    card = registered.description
    for fact in ("ViT `micro`", "MNI ICBM152 templates", "Fonov 2011", '"spacing": [2.0, 2.0, 2.0]', "0.875", "Research only",
                 "not for clinical", "ab" * 32, "icbm152 (2 scans)", "384 slices", "stage 2: 12 iterations", "Gram anchoring", "0" * 40):
        assert fact in card, fact
    assert registered.tags["intended_use"] == "research, not clinical"
    assert registered.tags["git.commit"] == "0" * 40 and registered.tags["git.dirty"] == "false"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("braindino-encoder", "champion")
    register_main(["promote", "--version", version, "--tracking-uri", mlflow_local.tracking_uri])
    assert str(client.get_model_version_by_alias("braindino-encoder", "champion").version) == version
    files = Path(mlflow.artifacts.download_artifacts("models:/braindino-encoder@champion", dst_path=str(mlflow_local.root / "model")))
    assert (files / "MLmodel").exists() and not [p for p in files.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt")]
    assert len(list(files.rglob("encoder.safetensors"))) == 1
    assert f"torch=={torch.__version__.split('+')[0]}" in (files / "requirements.txt").read_text().split()
    with no_unpickling():
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


def test_the_card_names_gram_anchoring_only_for_a_later_stage_with_a_positive_weight():
    config = load_config(PretrainConfig, TINY)
    lines = stage_summaries(config)
    assert len(lines) == 2 and "Gram" not in lines[0]
    assert lines[1].startswith("- stage 2: 12 iterations of 8 slices per worker; 2 global crops of 96 px")
    assert lines[1].endswith("DINO + iBOT + KoLeo + Gram anchoring to the stage-1 teacher (weight 1)")
    one_stage = load_config(PretrainConfig, TINY, ["stage2.iterations=0", "model.koleo_weight=0"])
    assert stage_summaries(one_stage) == ["- stage 1: 30 iterations of 8 slices per worker; 2 global crops of 64 px, "
                                          "4 local crops of 32 px; DINO + iBOT"]


def test_register_job_prints_its_config_and_refuses_without_a_run(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        register_main(["--config", str(TINY), "--run-id", "0123", "--checkpoint", "/ckpt/stage2", "--print-config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    config = load_config(RegisterJobConfig, tmp_path / "printed.yaml")
    tiny = load_config(PretrainConfig, TINY)
    assert (config.run_id, config.checkpoint_dir) == ("0123", "/ckpt/stage2")
    assert (config.stage2, config.checkpoint) == (tiny.stage2, tiny.checkpoint)
    assert yaml.safe_load(printed)["data"]["store"]["secret_key"] is None
    with pytest.raises(UserFacingError, match="--run-id RUN --checkpoint PATH"):
        register_main(["--config", str(TINY)])


def test_registration_through_a_throttling_store_reads_back_bit_identical_weights(flaky_store, tmp_path, monkeypatch):
    """MLflow's artifacts in S3 behind the fault proxy: a third of the uploads answer 503 SlowDown; the
    registration retries them (the store's policy, exported by register_run) and the version reads back whole."""
    from infra.local.faults import Fault
    from infra.local.services import LocalMlflow, create_bucket
    from tests.registered import register_tiny_encoder

    store, proxy = flaky_store
    create_bucket(store, "registry-flaky")
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)  # register_run exports them; restored after the test
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", store.endpoint_url)

    class S3ArtifactMlflow(LocalMlflow):
        artifact_root = "s3://registry-flaky/mlflow"

    local = S3ArtifactMlflow(tmp_path / "mlflow")
    local.root.mkdir()
    with proxy.injecting(Fault("slow_down", ["put", "part"], rate=0.34, seed=3)):
        version = register_tiny_encoder(local, tmp_path, PreprocessSpec())
    assert proxy.injected("slow_down") > 0, "no upload was throttled: the test proved nothing"
    fetched = fetch_encoder(f"models:/braindino-encoder/{version}", local.tracking_uri, tmp_path / "fetched")
    recorded = MlflowClient(local.tracking_uri).get_model_version("braindino-encoder", version).tags["weights_sha256"]
    weights = (fetched.directory / "encoder.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == recorded == fetched.weights_sha256


def test_registration_does_not_depend_on_the_experiment_this_process_used_before(tmp_path):
    """A driver that tracked something else first (an ingest, another store) still registers into the run's own."""
    from infra.local.services import LocalMlflow
    from pipelines.tracking import TrackingConfig, use_experiment
    from tests.registered import register_tiny_encoder

    elsewhere = LocalMlflow(tmp_path / "elsewhere")
    elsewhere.root.mkdir()
    for experiment in ("braindino-ingest", "braindino-evaluate"):  # ids 1 and 2 there; the run's is 1 here
        use_experiment(TrackingConfig(tracking_uri=elsewhere.tracking_uri, experiment=experiment,
                                      artifact_root=elsewhere.artifact_root))
    local = LocalMlflow(tmp_path / "mlflow")
    local.root.mkdir()
    version = register_tiny_encoder(local, tmp_path, PreprocessSpec())
    registered = MlflowClient(local.tracking_uri).get_model_version("braindino-encoder", version)
    assert registered.tags["source_run"] == registered.run_id
