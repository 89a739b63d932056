"""``ray job submit`` of the ingest and pretrain drivers against a local ``ray start --head``.

This file runs last in the session (see ``conftest.pytest_collection_modifyitems``). ``LocalRayHead``
uses free ports and stops only its own processes, so the session's Ray is untouched. The head inherits
this process's environment (S3 keys, pseudonym key), as a cluster's pods get theirs from secrets.
"""

from __future__ import annotations

import gzip

import pytest
from mlflow.tracking import MlflowClient

from infra.local.ray_nodes import LocalRayHead
from infra.local.services import create_bucket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def ray_head():
    head = LocalRayHead()
    try:
        yield head.start()
    finally:
        head.stop()


def test_ray_job_submit_ingests_real_scans_from_s3(ray_head, object_store, tmp_path, capfd):
    from braindino.catalogue import entry
    from ingest.manifest import ManifestStore
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
    submit_job(ray_head, "ingest.py", [
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


def test_ray_job_submit_trains_both_stages_and_registers_the_encoder(ray_head, tmp_path, tiny_overrides,
                                                                      object_store, capfd):
    from pipelines.pretrain import submit

    overrides = [*tiny_overrides(tmp_path), "stage1.iterations=12", "stage2.iterations=4", "checkpoint.every=6",
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
    assert max(m.step for m in history) == 12 + 4 - 1
    version = client.get_model_version_by_alias("braindino-encoder", "candidate")
    assert version.run_id == run_id
    stage2 = run.data.tags["checkpoint.stage2"]
    assert stage2.startswith("pretrain-data/job-submit/ray_results/job-submit-stage2/checkpoint_")
    listed = object_store.boto3_client().list_objects_v2(Bucket="pretrain-data", Prefix=stage2.split("/", 1)[1])
    names = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json"} <= names
