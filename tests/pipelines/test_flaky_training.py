"""Training through a misbehaving object store: shards streamed and checkpoints uploaded through the fault
proxy at the ingest tests' rates (10 % of requests throttled, 2 % of downloads cut short), and one checkpoint
upload that fails for good part-way through the stage."""

from __future__ import annotations

import json
import threading

import pytest
from mlflow.tracking import MlflowClient

from infra.local.faults import Fault

STAGE1, EVERY = 10, 5
ATTEMPTS = 6  # the store config's default retries.max_attempts per request
RAY_UPLOADS = 3  # Ray Train tries a checkpoint upload that failed with a retryable AWS error this often


def arm_after_first_checkpoint(store, bucket: str, proxy, stop: threading.Event) -> threading.Thread:
    """Once the first checkpoint's ``train_state.json`` is in the store (read directly, not through the
    proxy), refuse every attempt of the next upload of that file: the next checkpoint fails for good."""
    client = store.boto3_client()

    def watch() -> None:
        while not stop.wait(0.2):
            listed = client.list_objects_v2(Bucket=bucket, Prefix="ray_results/").get("Contents", [])
            if any(item["Key"].endswith("/train_state.json") for item in listed):
                proxy.inject(Fault("internal_error", ["put"], key="train_state.json", count=ATTEMPTS * RAY_UPLOADS))
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_through_a_flaky_store_sees_every_sample_and_restarts_after_a_lost_checkpoint(
        object_store, bucket, flaky_store, tiny_config, ray_session, tmp_path):
    from pipelines.pretrain import run

    proxied, proxy = flaky_store
    config = tiny_config(tmp_path, f"data.store.endpoint_url={proxied.endpoint_url}",
                         f"checkpoint.storage_path=s3://{bucket}/ray_results", f"stage1.iterations={STAGE1}",
                         "stage2.iterations=0", f"checkpoint.every={EVERY}", "checkpoint.max_failures=2",
                         "eval.every=100", "register.enabled=false")
    assert config.data.store.retries.max_attempts == ATTEMPTS
    proxy.inject(Fault("slow_down", ["get", "head", "list", "put", "part"], rate=0.1, seed=1),
                 Fault("reset", ["get"], rate=0.02, cut_at=0.3, seed=3))
    stop = threading.Event()
    watcher = arm_after_first_checkpoint(object_store, bucket, proxy, stop)
    try:
        result = run(config)
    finally:
        stop.set()
        watcher.join()

    assert proxy.injected("slow_down") > 0 and proxy.injected("internal_error", on="put") > 0
    steps = [m.step for m in MlflowClient(config.tracking.resolved_uri()).get_metric_history(result.run_id,
                                                                                              "loss_total")]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    assert repeated and min(repeated) >= EVERY, steps  # the restart began at the first checkpoint, not at zero
    assert result.final_step == STAGE1 and max(steps) == STAGE1 - 1
    with object_store.s3_filesystem().open_input_stream(f"{result.checkpoints['stage1']}/train_state.json") as saved:
        state = json.loads(saved.read())
    batch = config.stage1.batch_size_per_worker
    assert state["step"] == STAGE1 and state["data"]["samples_seen"] == STAGE1 * batch  # as many as a clean run
