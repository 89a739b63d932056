"""Two-stage pretraining on Ray Train (2 CPU workers, FSDP2 on gloo) over shards ingested from real scans.

The README's local command runs as written, in a subprocess that starts its own Ray with this
machine's CPUs (no pre-started head, RAY_ADDRESS unset): both stages, then registration. Most tests
read what that run left behind: the MLflow run, the checkpoints, the registry. A second run, in this
process, injects a fault on rank 1 during stage 1; a third resumes it on one worker; a fourth stalls.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from braindino.config import load_config
from pipelines.train.config import PretrainConfig
from tests.voice import assert_own_voice, run_braindino

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
README_COMMAND = ["pretrain", "--config", "configs/pretrain/tiny-cpu.yaml", "--set", "data.manifest=.local/ingest"]
STAGE1, EVERY, FAULT_AT = 10, 5, 7
MODEL_NAME = "braindino-encoder"


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, object_store, ingested):
    """``braindino pretrain`` exactly as the README's local command, in a folder holding ``configs/`` and a
    local copy of the session's ingest at ``.local/ingest``; MLflow and checkpoints land under ``.local``."""
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(REPO / "configs")
    bucket, prefix = ingested.removeprefix("s3://").split("/", 1)
    client = object_store.boto3_client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            target = root / ".local" / "ingest" / item["Key"].removeprefix(f"{prefix}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_", "BRAINDINO_ARTIFACT"))}
    done = run_braindino(README_COMMAND, root / "logs", env, root, timeout=840)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    config = load_config(PretrainConfig, root / "configs/pretrain/tiny-cpu.yaml", ["data.manifest=.local/ingest"])
    uri = f"sqlite:///{root / '.local' / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`braindino.run_name` = '{config.name}'")
    assert len(runs) == 1
    return {"root": root, "env": env, "done": done, "output": output, "config": config, "uri": uri, "client": client,
            "run": runs[0]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """Stage 1 alone, in this process on the session's Ray, with a fault injected on rank 1."""
    from pipelines.pretrain import run

    root = tmp_path_factory.mktemp("pretrain")
    marker = root / "fault-fired"
    config = tiny_config(root, f"stage1.iterations={STAGE1}", "stage2.iterations=0", f"checkpoint.every={EVERY}",
                         "eval.every=100", f"fault.at_step={FAULT_AT}", "fault.rank=1", f"fault.marker={marker}",
                         "register.enabled=false")
    result = run(config)
    return {"root": root, "config": config, "result": result, "marker": marker,
            "client": MlflowClient(config.tracking.resolved_uri())}


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_the_readme_command_trains_both_stages_on_a_local_ray_of_this_machine(readme_run):
    output, run, client = readme_run["output"], readme_run["run"], readme_run["client"]
    config = readme_run["config"]
    end1, end2 = config.stage1.iterations, config.stage1.iterations + config.stage2.iterations
    assert f"stage1 done at step {end1}" in output and f"stage2 done at step {end2}" in output, output[-4000:]
    for stage in config.stages():  # the driver's progress line, followed from the workers' MLflow reports
        steps = config.stage(stage).iterations
        assert f"  {stage} steps: {steps}/{steps} steps (100%) in " in output, output[-4000:]
    assert "[pretrain] stream: read + decode tasks at" in output
    assert run.info.status == "FINISHED" and run.data.tags["braindino.status"] == "finished"
    tags = run.data.tags
    assert tags["git.commit"] == head_commit() and tags["git.dirty"] in ("true", "false")
    assert tags["data.manifest"] == ".local/ingest" and tags["data.manifest_version"] == "1"
    assert len(tags["data.manifest_digest"]) == 64 and tags["version.torch"].startswith("2.13")
    for key in ("loss_total", "loss_dino", "loss_ibot", "loss_koleo", "loss_gram", "lr", "weight_decay", "momentum",
                "teacher_temp", "teacher_entropy", "teacher_kl_to_uniform", "student_feature_std", "prototype_usage",
                "collapse_warning", "images_per_s", "tokens_per_s", "data_wait_fraction", "knn_probe_accuracy"):
        assert key in run.data.metrics, f"metric {key} missing"
    assert max(step for step, _ in _history(client, run.info.run_id, "loss_total")) == end2 - 1
    assert 0.0 <= run.data.metrics["knn_probe_accuracy"] <= 1.0 and run.data.metrics["images_per_s"] > 0
    pngs = [a.path for a in client.list_artifacts(run.info.run_id, "pca")]
    assert pngs and Path(client.download_artifacts(run.info.run_id, pngs[-1])).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_command_speaks_in_its_own_voice(readme_run):
    config = readme_run["config"]
    lines, _ = assert_own_voice(readme_run["done"], "pretrain", readme_run["root"] / "logs",
                                f"braindino pretrain: pretrain {config.name!r}: stage1 then stage2 on "
                                f"{config.workers.num_workers} worker(s)")
    run_id = readme_run["run"].info.run_id
    assert any(re.match(rf"  MLflow run +{run_id} \(experiment ", line) for line in lines), lines[-8:]
    assert any(re.fullmatch(rf"  registered +{config.register.model_name} version 1 @{config.register.alias}", line)
               for line in lines), lines[-8:]


def test_the_register_command_speaks_in_its_own_voice(readme_run):
    """``braindino register`` on the README run's last checkpoint, under another model name (the run's own
    registration stays the one the other tests read)."""
    root, run = readme_run["root"], readme_run["run"]
    checkpoint = run.data.tags["checkpoint.stage2"]
    done = run_braindino(["register", *README_COMMAND[1:], "--set", "register.model_name=braindino-encoder-cli",
                          "--run-id", run.info.run_id, "--checkpoint", checkpoint], root / "logs", readme_run["env"],
                         root, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    lines, _ = assert_own_voice(done, "register", root / "logs", f"braindino register: register the EMA teacher of run "
                                f"{run.info.run_id} as braindino-encoder-cli", chatter=("mlflow",))
    version = readme_run["client"].get_model_version_by_alias("braindino-encoder-cli", "candidate")
    assert version.run_id == run.info.run_id and version.tags["source_run"] == run.info.run_id
    assert re.fullmatch(rf"  registered +braindino-encoder-cli version {version.version} @candidate", lines[-3]), lines


def test_each_stage_logs_its_own_schedules_on_one_step_axis(readme_run):
    """Both stages' curves live in the one run; each stage's values restart from its own schedules."""
    config, client, run_id = readme_run["config"], readme_run["client"], readme_run["run"].info.run_id
    stage2_start = config.first_step("stage2")
    for stage in config.stages():
        schedules, first = config.stage_schedules(stage), config.first_step(stage)
        logged = {name: [(s, v) for s, v in _history(client, run_id, name)
                         if first <= s < first + config.stage(stage).iterations]
                  for name in ("lr", "weight_decay", "momentum", "teacher_temp")}
        assert all(logged.values()), f"{stage}: a schedule was never logged"
        for name, history in logged.items():
            for step, value in history:
                assert value == pytest.approx(getattr(schedules.at(step - first), name), rel=1e-6), (stage, name, step)
    stage2 = [v for s, v in _history(client, run_id, "teacher_temp") if s >= stage2_start]
    assert stage2 and all(v == pytest.approx(0.07) for v in stage2)
    assert all(v == pytest.approx(0.999) for s, v in _history(client, run_id, "momentum") if s >= stage2_start)


def test_loss_falls_and_features_do_not_collapse(readme_run):
    config, client, run_id = readme_run["config"], readme_run["client"], readme_run["run"].info.run_id
    losses = [v for s, v in _history(client, run_id, "loss_total") if s < config.stage1.iterations]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
    grace = round(config.eval.collapse_grace_epochs * config.data.iterations_per_epoch)
    threshold = config.eval.collapse_fraction / np.sqrt(config.model.vit.embed_dim)
    stds = [v for s, v in _history(client, run_id, "student_feature_std") if s >= grace]
    assert stds and min(stds) > threshold
    assert all(v == 0.0 for _, v in _history(client, run_id, "collapse_warning"))


def test_the_registered_encoder_names_its_commit_and_digest_and_reproduces_the_teacher(readme_run, no_unpickling):
    import mlflow

    from braindino.features import Encoder
    from braindino.models.vit import VisionTransformer
    from pipelines.register import main as register_main
    from pipelines.train.checkpoint import load_backbone_weights

    client, run, config = readme_run["client"], readme_run["run"], readme_run["config"]
    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    assert version.run_id == run.info.run_id and version.tags["git.commit"] == head_commit()
    card = version.description
    assert "Research only" in card and "MNI ICBM152" in card and head_commit() in card
    assert "- stage 2: 12 iterations" in card and "Gram anchoring to the stage-1 teacher" in card
    uri = readme_run["uri"]
    mlflow.set_tracking_uri(uri)
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@candidate",
                                                     dst_path=str(readme_run["root"] / "downloaded")))
    assert not [p for p in files.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt")]
    weights = next(files.rglob("encoder.safetensors"))
    assert version.tags["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(next(files.rglob("preprocess.json")).read_text())["slice_size"] == 96
    teacher = VisionTransformer(config.model.vit).eval()
    teacher.load_state_dict(load_backbone_weights(run.data.tags["checkpoint.stage2"], "teacher"))
    slices = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = teacher(slices).cls
    assert torch.equal(Encoder.from_checkpoint(weights).encode_slices(slices), expected)
    with no_unpickling():
        served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@candidate").predict(slices.numpy())
    assert np.array_equal(served, expected.numpy())
    register_main(["promote", "--version", str(version.version), "--tracking-uri", uri])
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == version.version


def test_run_logs_config_without_secrets(trained):
    client, run_id = trained["client"], trained["result"].run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["stage1.iterations"] == str(STAGE1) and run.data.params["model.vit.size"] == "micro"
    secret = trained["config"].data.store.secret_key
    assert secret and run.data.params["data.store.secret_key"] == run.data.params["data.store.access_key"] == "<redacted>"
    assert secret not in run.data.params.values()
    assert run.data.tags["checkpoint.stage1"] and run.data.tags["git.commit"] == head_commit()


def test_fault_restarts_workers_and_training_continues_from_the_last_checkpoint(trained):
    assert trained["marker"].exists(), "the injected fault never fired"
    steps = [step for step, _ in _history(trained["client"], trained["result"].run_id, "loss_total")]
    last_checkpoint_before_fault = (FAULT_AT // EVERY) * EVERY
    # steps logged before the fault are logged again only from the last checkpoint on, never from zero
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    assert repeated and min(repeated) >= last_checkpoint_before_fault
    assert steps.count(1) == 1
    assert max(steps) == STAGE1 - 1
    state = json.loads((Path(trained["result"].checkpoints["stage1"]) / "train_state.json").read_text())
    assert state["step"] == STAGE1 and state["stage"] == "stage1" and state["world_size"] == 2
    assert state["data"]["samples_seen"] > 0 and state["mlflow_run_id"] == trained["result"].run_id


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


def test_a_stream_that_stalls_fails_the_run_naming_the_stage(tiny_config, tmp_path):
    """A timeout shorter than the stream's start-up: the first wait is a stall, and no restart is allowed."""
    from pipelines.pretrain import run
    from pipelines.train.watchdog import DataStalled

    config = tiny_config(tmp_path, "name=stalls", "stage2.iterations=0", "workers.num_workers=1",
                         "data.augment_on=worker", "data.stall_timeout_s=0.05", "checkpoint.max_failures=0",
                         "register.enabled=false", "eval.every=1000")
    with pytest.raises(DataStalled, match=r"\(data.stall_timeout_s=0.05\): the stream is stuck at (read|decode|split)"):
        run(config)
    client = MlflowClient(config.tracking.resolved_uri())
    stalled = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])[0]
    assert stalled.info.status == "FAILED" and stalled.data.tags["braindino.status"] == "stalled"
    assert "data.stall_timeout_s=0.05" in stalled.data.tags["braindino.stalled_message"]
