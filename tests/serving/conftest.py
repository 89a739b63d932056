"""Serving fixtures: a tiny encoder registered in a local MLflow, and one running service for this folder's tests.

The service runs on the session's local Ray: one Serve instance on a free loopback port, replicas at a
quarter CPU, the API token in a file the ingress replica reads (``$BRAINDINO_SERVE_TOKEN_FILE``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from braindino.volumes import PreprocessSpec
from infra.local.services import LocalMlflow, free_port
from tests.registered import register_tiny_encoder

PREPROCESS = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=64)
SLICES_PER_VOLUME = 16
UPLOAD_MB = 40


@dataclass(frozen=True)
class Registry:
    mlflow: LocalMlflow
    encoder_version: str
    encoder_sha256: str
    preprocess: PreprocessSpec = PREPROCESS


@dataclass(frozen=True)
class Service:
    url: str
    token: str
    registry: Registry
    slices_per_volume: int = SLICES_PER_VOLUME
    upload_mb: int = UPLOAD_MB

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="package")
def registry(tmp_path_factory) -> Registry:
    """A tiny encoder registered by the registration pipeline and promoted to champion."""
    from mlflow.tracking import MlflowClient

    from pipelines.register import promote

    root = tmp_path_factory.mktemp("registry")
    local = LocalMlflow(root / "mlflow")
    local.root.mkdir()
    version = register_tiny_encoder(local, root, PREPROCESS)
    promote("braindino-encoder", version, "champion", local.tracking_uri)
    digest = MlflowClient(local.tracking_uri).get_model_version("braindino-encoder", version).tags["weights_sha256"]
    return Registry(local, version, digest)


@pytest.fixture(scope="package")
def service(ray_session, registry, tmp_path_factory) -> Service:
    """The application serving the champion, started once; torn down with ``serve.shutdown``."""
    from ray import serve

    from serving.app import APP_NAME, build_app
    from serving.auth import TOKEN_FILE_ENV
    from serving.client import Client
    from serving.settings import EncoderSettings, IngressSettings

    token = secrets.token_urlsafe(24)
    token_file = Path(tmp_path_factory.mktemp("secret")) / "token"
    token_file.write_text(f"{token}\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        EncoderSettings(tracking_uri=registry.mlflow.tracking_uri, batch_wait_timeout_s=0.05),
        IngressSettings(max_upload_mb=UPLOAD_MB, slices_per_volume=SLICES_PER_VOLUME, decode_threads=2),
        encoder_options={"ray_actor_options": {"num_cpus": 0.25}},
        ingress_options={"ray_actor_options": {"num_cpus": 0.25, "runtime_env": {"env_vars": {TOKEN_FILE_ENV: str(token_file)}}},
                         "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    Client(url).wait_ready(timeout_s=180)
    yield Service(url, token, registry)
    serve.shutdown()
