"""Our wiring of the local services: the S3 server and its keys, buckets, MLflow's locations, the Ray guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[2]


def test_the_local_store_exports_its_keys_so_the_standard_credential_chain_reaches_it(object_store, bucket):
    from infra.local.services import LOCAL_KEYS, create_bucket

    assert {k: os.environ[k] for k in LOCAL_KEYS} == LOCAL_KEYS
    assert object_store.endpoint_url.startswith("http://127.0.0.1:")
    plain = boto3.client("s3", endpoint_url=object_store.endpoint_url)  # keys and region from the environment only
    create_bucket(object_store, bucket)  # a second time: nothing happens
    assert [b["Name"] for b in plain.list_buckets()["Buckets"]].count(bucket) == 1


def test_experiments_put_artifacts_under_the_configured_root_and_runs_carry_the_commit(mlflow_local):
    import mlflow

    from pipelines.tracking import TrackingConfig, provenance_tags, use_experiment

    config = TrackingConfig(mlflow_local.tracking_uri, "foundation", mlflow_local.artifact_root)
    experiment_id = use_experiment(config)
    assert mlflow.get_experiment(experiment_id).artifact_location == f"{mlflow_local.artifact_root}/foundation"
    with mlflow.start_run() as run:  # no experiment named: use_experiment made it the active one
        mlflow.log_text("hello", "notes/readme.txt")
    assert run.info.experiment_id == experiment_id
    assert (mlflow_local.root / "artifacts" / "foundation" / run.info.run_id / "artifacts" / "notes" / "readme.txt").read_text() == "hello"
    assert use_experiment(config) == experiment_id  # idempotent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert provenance_tags()["git.commit"] == (head or "unknown")


def test_a_driver_pointed_at_a_job_api_url_exits_with_the_submit_command():
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    done = subprocess.run([sys.executable, "-c", "from pipelines.jobs import connect_ray; connect_ray()"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "ray job submit --address http://127.0.0.1:8265" in done.stderr


def test_bundled_real_mri_lands_in_the_bucket_byte_for_byte(object_store, bucket):
    from infra.local.bundled import scan_files, upload_bundled
    from infra.local.catalogue import entry

    datasets = {"icbm152": ["icbm2009c_t2"], "heudiconv": ["heudiconv_dwi"]}
    written = upload_bundled(object_store, bucket, datasets)

    assert written["icbm152"] == ["raw/icbm152/icbm2009c_t2/mni_icbm152_t2_tal_nlin_sym_09c.nii"]
    dicoms = scan_files(entry("heudiconv_dwi"))
    assert written["heudiconv"] == [f"raw/heudiconv/heudiconv_dwi/{f.name}" for f in dicoms]
    body = object_store.boto3_client().get_object(Bucket=bucket, Key=written["heudiconv"][0])["Body"].read()
    assert body == dicoms[0].read_bytes()
