"""Two-stage pretraining on Ray Train (2 CPU workers, FSDP2 on gloo) over shards ingested from real scans.

One run per module (Ray Train's fixed cost is tens of seconds): stage 1 with a fault injected on rank 1,
then stage 2 with Gram anchoring, then registration. The tests read what that run left behind: the
MLflow run, the checkpoints, the registry. A second run resumes stage 1 on one worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STAGE1, STAGE2, EVERY, FAULT_AT = 20, 6, 5, 7
MODEL_NAME = "braindino-encoder"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    from pipelines.pretrain import run

    root = tmp_path_factory.mktemp("pretrain")
    marker = root / "fault-fired"
    config = tiny_config(root, f"stage1.iterations={STAGE1}", f"stage2.iterations={STAGE2}",
                         f"checkpoint.every={EVERY}", "eval.every=10", f"fault.at_step={FAULT_AT}", "fault.rank=1",
                         f"fault.marker={marker}")
    result = run(config)
    return {"root": root, "config": config, "result": result, "marker": marker,
            "client": MlflowClient(config.tracking.resolved_uri())}


def _history(trained, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in trained["client"].get_metric_history(trained["result"].run_id, key)]


def test_run_logs_config_provenance_metrics_and_artifacts(trained):
    client, run_id = trained["client"], trained["result"].run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["stage1.iterations"] == str(STAGE1)
    assert run.data.params["model.vit.size"] == "micro"
    secret = trained["config"].data.store.secret_key
    assert secret and run.data.params["data.store.secret_key"] == run.data.params["data.store.access_key"] == "<redacted>"
    assert secret not in run.data.params.values()
    tags = run.data.tags
    assert len(tags["data.manifest_digest"]) == 64 and tags["data.manifest_version"] == "1"
    assert tags["git.commit"] and tags["version.torch"].startswith("2.13")
    assert tags["checkpoint.stage1"] and tags["checkpoint.stage2"]
    for key in ("loss_total", "loss_dino", "loss_ibot", "loss_koleo", "loss_gram", "lr", "weight_decay", "momentum",
                "teacher_temp", "teacher_entropy", "teacher_kl_to_uniform", "student_feature_std", "prototype_usage",
                "collapse_warning", "images_per_s", "tokens_per_s", "data_wait_fraction", "knn_probe_accuracy"):
        assert key in run.data.metrics, f"metric {key} missing"
    assert 0.0 <= run.data.metrics["knn_probe_accuracy"] <= 1.0
    assert run.data.metrics["images_per_s"] > 0
    pngs = [a.path for a in client.list_artifacts(run_id, "pca")]
    assert pngs and all(p.endswith(".png") for p in pngs)
    local = Path(client.download_artifacts(run_id, pngs[-1]))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fault_restarts_workers_and_training_continues_from_the_last_checkpoint(trained):
    assert trained["marker"].exists(), "the injected fault never fired"
    steps = [step for step, _ in _history(trained, "loss_total")]
    last_checkpoint_before_fault = (FAULT_AT // EVERY) * EVERY
    # steps logged before the fault are logged again only from the last checkpoint on, never from zero
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    assert repeated and min(repeated) >= last_checkpoint_before_fault
    assert steps.count(1) == 1
    assert max(steps) == STAGE1 + STAGE2 - 1
    state = json.loads((Path(trained["result"].checkpoints["stage2"]) / "train_state.json").read_text())
    assert state["step"] == STAGE1 + STAGE2 and state["stage"] == "stage2" and state["world_size"] == 2
    assert state["data"]["samples_seen"] > 0 and state["mlflow_run_id"] == trained["result"].run_id


def test_each_stage_logs_its_own_schedules_on_one_step_axis(trained):
    """Both stages' curves live in the one run; each stage's values restart from its own schedules."""
    config = trained["config"]
    stage2_start = config.first_step("stage2")
    for stage in config.stages():
        schedules, first = config.stage_schedules(stage), config.first_step(stage)
        logged = {name: [(s, v) for s, v in _history(trained, name) if first <= s < first + config.stage(stage).iterations]
                  for name in ("lr", "weight_decay", "momentum", "teacher_temp")}
        assert all(logged.values()), f"{stage}: a schedule was never logged"
        for name, history in logged.items():
            for step, value in history:
                assert value == pytest.approx(getattr(schedules.at(step - first), name), rel=1e-6), (stage, name, step)
    stage2 = [v for s, v in _history(trained, "teacher_temp") if s >= stage2_start]
    assert stage2 and all(v == pytest.approx(0.07) for v in stage2)
    assert all(v == pytest.approx(0.999) for s, v in _history(trained, "momentum") if s >= stage2_start)


def test_loss_falls_and_features_do_not_collapse(trained):
    config = trained["config"]
    losses = [v for s, v in _history(trained, "loss_total") if s < STAGE1]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
    grace = round(config.eval.collapse_grace_epochs * config.data.iterations_per_epoch)
    threshold = config.eval.collapse_fraction / np.sqrt(config.model.vit.embed_dim)
    stds = [v for s, v in _history(trained, "student_feature_std") if s >= grace]
    assert stds and min(stds) > threshold
    assert all(v == 0.0 for _, v in _history(trained, "collapse_warning"))


def test_registered_encoder_reproduces_the_teacher_features(trained):
    import mlflow

    from braindino.features import Encoder
    from braindino.models.vit import VisionTransformer
    from pipelines.register import main as register_main
    from pipelines.train.checkpoint import load_backbone_weights

    client, result, config = trained["client"], trained["result"], trained["config"]
    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    assert str(version.version) == result.model_version
    assert version.run_id == result.run_id
    card = version.description
    assert "Research only" in card and "MNI ICBM152" in card and "stage 2" in card
    mlflow.set_tracking_uri(config.tracking.resolved_uri())
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@candidate"))
    weights = next(files.rglob("encoder.safetensors"))
    assert json.loads(next(files.rglob("preprocess.json")).read_text())["slice_size"] == 96
    encoder = Encoder.from_checkpoint(weights)
    teacher = VisionTransformer(config.model.vit).eval()
    teacher.load_state_dict(load_backbone_weights(result.checkpoints["stage2"], "teacher"))
    slices = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = teacher(slices).cls
    assert torch.equal(encoder.encode_slices(slices), expected)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@candidate").predict(slices.numpy())
    assert np.array_equal(served, expected.numpy())
    register_main(["promote", "--version", str(version.version), "--tracking-uri", config.tracking.resolved_uri()])
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == version.version


def test_stage1_resumes_on_one_worker_from_the_two_worker_checkpoint(trained, tiny_config):
    from pipelines.pretrain import run

    more = STAGE1 + 4
    config = tiny_config(trained["root"], f"stage1.iterations={more}", "stage2.iterations=0",
                         f"checkpoint.every={EVERY}", "eval.every=100", "workers.num_workers=1",
                         "workers.cpus_per_worker=1", "register.enabled=false")
    result = run(config)
    steps = [m.step for m in trained["client"].get_metric_history(result.run_id, "loss_total")]
    assert result.run_id != trained["result"].run_id
    assert min(steps) >= STAGE1 and max(steps) == more - 1
    state = json.loads((Path(result.checkpoints["stage1"]) / "train_state.json").read_text())
    assert state["step"] == more and state["world_size"] == 1
