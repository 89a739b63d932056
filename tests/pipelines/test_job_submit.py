"""``ray job submit`` of the ingest and pretrain drivers against a local ``ray start --head``.

This file runs last in the session (see ``conftest.pytest_collection_modifyitems``). The head uses
free ports, stops only its own processes (the session's Ray is untouched) and declares the two CPUs
of the machine it is tested on. It inherits this process's environment (S3 keys, pseudonym key), as a
cluster's pods get theirs from secrets; the uploaded working directory has no ``.git``, so the
commit the runs name travelled with the submission.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from infra.local.ray_nodes import local_ray_head
from infra.local.services import create_bucket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_head():
    with local_ray_head(num_cpus=2) as address:
        yield address


def submitted_revision() -> dict[str, str]:
    """HEAD of this checkout and whether its tree differs from it, as git reports them here."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": "true" if git("status", "--porcelain") else "false"}


def test_ray_job_submit_ingests_real_scans_from_s3(ray_head, object_store, tmp_path, capfd):
    from infra.local.catalogue import entry
    from datastore.manifest import ManifestStore
    from pipelines.jobs import submit_job

    scan = entry("icbm2009c_t1")
    if not scan.available:
        pytest.skip(f"icbm2009c_t1 not available: {scan.install_hint}")
    bucket = "submitted-ingest"
    create_bucket(object_store, bucket)
    client = object_store.boto3_client()
    client.upload_file(str(scan.path), bucket, "raw/sub-01/t1.nii")
    truncated = gzip.compress(scan.path.read_bytes(), compresslevel=1)
    client.put_object(Bucket=bucket, Key="raw/sub-02/t1.nii.gz", Body=truncated[: len(truncated) // 2])
    spec = tmp_path / "submitted.yaml"
    spec.write_text(f"name: submitted\nsource: s3://{bucket}/raw\nlicence: MNI ICBM152\n")
    output = f"s3://{bucket}/ingest"
    submit_job(ray_head, "ingestion.py", [
        "--config", "configs/ingest.yaml", "--dataset", str(spec),
        "--set", f"ingest.output={output}", "--set", f"ingest.storage.endpoint_url={object_store.endpoint_url}",
        "--set", "ingest.preprocess.spacing=[2.0, 2.0, 2.0]", "--set", "ingest.preprocess.slice_size=96",
        "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", f"tracking.artifact_root={(tmp_path / 'artifacts').as_uri()}",
    ])
    printed = capfd.readouterr().out
    assert "succeeded" in printed and "scans ok 1; quarantined 1 (truncated_gzip: 1)" in printed, printed[-4000:]
    manifest = ManifestStore(output, object_store).latest()
    ok = [row for row in manifest.scans.to_pylist() if row["status"] == "ok"]
    assert len(ok) == 1 and manifest.slices.num_rows == ok[0]["slices_kept"] > 0
    assert f"{output}/manifest/v000001.json" in printed
    tracking = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ingest_run, = tracking.search_runs([tracking.get_experiment_by_name("braindino-ingest").experiment_id])
    assert {key: ingest_run.data.tags[key] for key in ("git.commit", "git.dirty")} == submitted_revision()


def test_ray_job_submit_trains_both_stages_and_registers_the_encoder(ray_head, tmp_path, tiny_overrides,
                                                                      object_store, capfd):
    from pipelines.pretrain import submit

    overrides = [*tiny_overrides(tmp_path), "stage1.iterations=6", "stage2.iterations=2", "checkpoint.every=3",
                 "eval.every=6", "data.augment_on=worker",  # the other tests cover ray_data
                 "checkpoint.storage_path=s3://pretrain-data/job-submit/ray_results"]  # checkpoints in object storage
    uri = next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.tracking_uri="))
    run_id = submit(ray_head, "configs/pretrain/tiny-cpu.yaml", overrides, uri, name="job-submit")
    output = capfd.readouterr().out
    assert "succeeded" in output and "[pretrain] registered braindino-encoder version" in output, output[-4000:]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.augment_on"] == "worker"
    history = client.get_metric_history(run_id, "loss_total")
    assert max(m.step for m in history) == 6 + 2 - 1
    revision = submitted_revision()
    assert {key: run.data.tags[key] for key in revision} == revision
    version = client.get_model_version_by_alias("braindino-encoder", "candidate")
    assert version.run_id == run_id and {key: version.tags[key] for key in revision} == revision
    mlflow.set_tracking_uri(uri)
    files = Path(mlflow.artifacts.download_artifacts(f"models:/braindino-encoder/{version.version}",
                                                     dst_path=str(tmp_path / "registered")))
    weights, = files.rglob("encoder.safetensors")
    assert version.tags["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert revision["git.commit"] in version.description
    stage2 = run.data.tags["checkpoint.stage2"]
    assert stage2.startswith("pretrain-data/job-submit/ray_results/job-submit-stage2/checkpoint_")
    listed = object_store.boto3_client().list_objects_v2(Bucket="pretrain-data", Prefix=stage2.split("/", 1)[1])
    names = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json"} <= names
