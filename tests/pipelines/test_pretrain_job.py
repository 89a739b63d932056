"""``ray job submit`` of the tiny config against a local ``ray start --head``: both stages, then the registry.

This file runs last in the session (see ``conftest.pytest_collection_modifyitems``). ``LocalRayHead``
uses free ports and stops only its own processes, so the session's Ray is untouched.
"""

from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from infra.local.services import LocalRayHead

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_ray_job_submit_trains_both_stages_and_registers_the_encoder(tmp_path, tiny_overrides, object_store, capfd):
    from pipelines.pretrain import submit

    overrides = [*tiny_overrides(tmp_path), "stage1.iterations=12", "stage2.iterations=4", "checkpoint.every=6",
                 "eval.every=6", "data.augment_on=worker",  # the other tests cover ray_data
                 "checkpoint.storage_path=s3://pretrain-data/job-submit/ray_results"]  # checkpoints in object storage
    uri = next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.tracking_uri="))
    head = LocalRayHead()
    try:
        address = head.start()
        run_id = submit(address, "configs/pretrain/tiny-cpu.yaml", overrides, uri, name="job-submit")
    finally:
        head.stop()
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
