"""The local services that the demo and the tests run on: S3 on loopback, a Ray head, MLflow on sqlite.

Each is real (moto's S3 server, Ray itself, MLflow's own sqlite store), bound to 127.0.0.1, and
started and stopped by the project. ``local_stack`` brings up what a caller asks for and tears it
down in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ingest.storage import ObjectStoreConfig

LOCAL_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class LocalObjectStore:
    """moto's S3 server on 127.0.0.1 with an ephemeral port, living in this process."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        os.environ.update(LOCAL_KEYS)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.config: ObjectStoreConfig | None = None

    def start(self) -> ObjectStoreConfig:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.config = ObjectStoreConfig(
            endpoint_url=f"http://{host}:{port}",
            access_key=LOCAL_KEYS["AWS_ACCESS_KEY_ID"],
            secret_key=LOCAL_KEYS["AWS_SECRET_ACCESS_KEY"],
        )
        return self.config

    def stop(self) -> None:
        self._server.stop()


def create_bucket(store: ObjectStoreConfig, name: str) -> None:
    """Create ``name`` unless it exists already."""
    client = store.boto3_client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)


@dataclass(frozen=True)
class LocalMlflow:
    """MLflow tracking on a sqlite file with a local artifact root (no server process needed)."""

    root: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.root.resolve() / "artifacts").as_uri()

    def ui_command(self, port: int = 5000) -> str:
        return (
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui "
            f"--backend-store-uri {self.tracking_uri} --default-artifact-root {self.artifact_root} "
            f"--host 127.0.0.1 --port {port}"
        )


class LocalRayHead:
    """A ``ray start --head`` cluster on loopback, the target of ``ray job submit``.

    Token auth is disabled on this loopback-only head so the job client needs no token.
    """

    def __init__(self, num_cpus: int = 4, port: int = 6390, dashboard_port: int = 8265, object_store_mb: int = 1024):
        self.num_cpus = num_cpus
        self.port = port
        self.dashboard_port = dashboard_port
        self.object_store_mb = object_store_mb

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> str:
        self._ray(
            "start", "--head", f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1",
            f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats",
        )
        return self.dashboard_url

    def stop(self) -> None:
        self._ray("stop", "--force")

    def _ray(self, *args: str) -> None:
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        subprocess.run([ray, *args], check=True, env=env, stdout=subprocess.DEVNULL)


@dataclass
class LocalStack:
    store: ObjectStoreConfig
    mlflow: LocalMlflow
    ray_dashboard: str | None


@contextlib.contextmanager
def local_stack(root: Path, with_ray_head: bool = False, ray_cpus: int = 4) -> Iterator[LocalStack]:
    """Start S3 on loopback (+ a Ray head if asked), point MLflow at ``root``; stop all on exit."""
    root.mkdir(parents=True, exist_ok=True)
    store = LocalObjectStore()
    head = LocalRayHead(num_cpus=ray_cpus) if with_ray_head else None
    config = store.start()
    try:
        dashboard = head.start() if head else None
        if head:
            os.environ["RAY_ADDRESS"] = dashboard
        yield LocalStack(config, LocalMlflow(root), dashboard)
    finally:
        if head:
            os.environ.pop("RAY_ADDRESS", None)
            head.stop()
        store.stop()
