"""The team MLflow server, started from infra/k8s/mlflow.yaml (``team_mlflow``): runs and the registry in
PostgreSQL, artifacts in S3 served through the server, the in-cluster Service name an allowed host.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(600)

MODEL = "team-encoder"


def _status(url: str, path: str, body: dict | None = None, *, host: str) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Host": host, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_clients_using_the_service_name_are_served_and_other_hosts_refused(team_mlflow):
    search = ("/api/2.0/mlflow/experiments/search", {"max_results": 5})
    service = team_mlflow.manifest.service_host
    assert service == "mlflow:5000"
    for host in (service, "mlflow", "mlflow.braindino.svc.cluster.local:5000"):
        assert _status(team_mlflow.url, *search, host=host) == 200, host
    assert _status(team_mlflow.url, *search, host="rebound.example:5000") == 403
    # /health answers any Host: a passing readiness probe says nothing about what clients get
    assert _status(team_mlflow.url, "/health", host="rebound.example:5000") == 200


def test_server_settings_are_the_manifests(team_mlflow):
    manifest = team_mlflow.manifest
    assert manifest.command == ["mlflow", "server"]
    for name in ("MLFLOW_SERVE_ARTIFACTS", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_SERVER_ALLOWED_HOSTS",
                 "MLFLOW_WORKERS", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"):
        assert team_mlflow.env[name] == manifest.env[name]
    assert team_mlflow.env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert team_mlflow.env["MLFLOW_HOST"] == "127.0.0.1" and manifest.env["MLFLOW_HOST"] == "0.0.0.0"


@pytest.fixture(scope="module")
def registered(team_mlflow, tmp_path_factory):
    """A job's run through the server: params, a metric, a text artifact and a registered micro encoder."""
    import mlflow

    from braindino.features import Encoder
    from braindino.models.vit import ViTConfig, VisionTransformer
    from braindino.volumes import PreprocessSpec
    from pipelines.register import EXPORT_ARTIFACT, PYFUNC_CODE, pinned_requirements
    from pipelines.tracking import TrackingConfig, use_experiment

    export = tmp_path_factory.mktemp("export") / EXPORT_ARTIFACT
    export.mkdir()
    Encoder(VisionTransformer(ViTConfig(size="micro"))).save(export / "encoder.safetensors")
    (export / "preprocess.json").write_text(PreprocessSpec().to_json())
    experiment_id = use_experiment(TrackingConfig(tracking_uri=team_mlflow.url, experiment="team-check"))
    with mlflow.start_run(run_name="team-check") as run:
        mlflow.log_param("size", "micro")
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_text("through the server", "notes/readme.txt")
        info = mlflow.pyfunc.log_model(name="encoder", python_model=str(PYFUNC_CODE),
                                       artifacts={EXPORT_ARTIFACT: str(export)},
                                       pip_requirements=pinned_requirements(), registered_model_name=MODEL)
    mlflow.set_tracking_uri(None)
    digest = hashlib.sha256((export / "encoder.safetensors").read_bytes()).hexdigest()
    return {"experiment_id": experiment_id, "run_id": run.info.run_id, "version": info.registered_model_version,
            "digest": digest}


def test_runs_and_the_registry_are_in_postgresql(team_mlflow, registered):
    import psycopg

    with psycopg.connect(team_mlflow.env["MLFLOW_BACKEND_STORE_URI"]) as connection:
        runs = {row[0] for row in connection.execute("SELECT run_uuid FROM runs")}
        versions = set(connection.execute("SELECT name, version, run_id FROM model_versions"))
        location = connection.execute("SELECT artifact_location FROM experiments WHERE experiment_id = %s",
                                      (int(registered["experiment_id"]),)).fetchone()[0]
    assert registered["run_id"] in runs
    assert (MODEL, int(registered["version"]), registered["run_id"]) in versions
    assert location.startswith("mlflow-artifacts:/")  # the server's store, not a path on the job's machine


def test_artifacts_land_in_the_bucket_the_manifest_names(team_mlflow, object_store, registered):
    bucket, prefix = team_mlflow.manifest.env["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/", 1)
    client = object_store.boto3_client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    notes = [k for k in keys if k.endswith(f"{registered['run_id']}/artifacts/notes/readme.txt")]
    assert len(notes) == 1
    assert client.get_object(Bucket=bucket, Key=notes[0])["Body"].read() == b"through the server"
    weights = [k for k in keys if k.endswith("encoder.safetensors")]
    assert weights
    assert any(hashlib.sha256(client.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest()
               == registered["digest"] for k in weights)


def test_a_client_without_bucket_credentials_loads_the_registered_encoder(team_mlflow, registered, tmp_path):
    """No AWS keys and an S3 endpoint that answers nothing: artifacts still come, through the server."""
    script = (
        "import hashlib, pathlib, sys, mlflow\n"
        f"mlflow.set_tracking_uri({team_mlflow.url!r})\n"
        f"path = pathlib.Path(mlflow.artifacts.download_artifacts('models:/{MODEL}/{registered['version']}', "
        f"dst_path={str(tmp_path)!r}))\n"
        "print(hashlib.sha256(next(path.rglob('encoder.safetensors')).read_bytes()).hexdigest())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:9", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == registered["digest"]
