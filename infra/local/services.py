"""The local services that the demo and the tests run on: S3 on loopback (optionally behind a
fault-injecting proxy) and MLflow on sqlite.

Each is real (moto's S3 server, MLflow's own sqlite store), bound to 127.0.0.1, and started and
stopped by the project (Ray nodes: ``infra.local.ray_nodes``; the team MLflow server:
``infra.local.team_mlflow``). ``local_stack`` brings up what a caller asks for and tears it
down in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from datastore.objectstore import ObjectStoreConfig
from infra.local.faults import FaultProxy

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


@contextlib.contextmanager
def fault_proxied(store: ObjectStoreConfig) -> Iterator[tuple[ObjectStoreConfig, FaultProxy]]:
    """``store`` behind a fault-injecting proxy on loopback while the block runs: the config to give the
    code under test, and the proxy that injects faults (none until told) and counts them."""
    proxy = FaultProxy(store.endpoint_url)
    proxy.start()
    try:
        yield replace(store, endpoint_url=proxy.url), proxy
    finally:
        proxy.stop()


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalStack:
    store: ObjectStoreConfig
    mlflow: LocalMlflow


@contextlib.contextmanager
def local_stack(root: Path) -> Iterator[LocalStack]:
    """Start S3 on loopback and point MLflow at ``root``; stop the store on exit."""
    root.mkdir(parents=True, exist_ok=True)
    store = LocalObjectStore()
    config = store.start()
    try:
        yield LocalStack(config, LocalMlflow(root))
    finally:
        store.stop()
