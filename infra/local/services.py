"""The local services that the demo and the tests run on: S3 on loopback (optionally behind a
fault-injecting proxy), a Ray head, MLflow on sqlite.

Each is real (moto's S3 server, Ray itself, MLflow's own sqlite store), bound to 127.0.0.1, and
started and stopped by the project. ``local_stack`` brings up what a caller asks for and tears it
down in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import time
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


class LocalRayHead:
    """A ``ray start --head`` on loopback with every port free, the target of ``ray job submit``.

    Token auth is disabled on this loopback-only head so the job client needs no token. ``stop`` ends
    only this head's processes (those naming its GCS port or its session directory), never ``ray
    stop``, which would end every Ray on the machine.
    """

    PORT_FLAGS = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                  "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")

    def __init__(self, num_cpus: int = 4, object_store_mb: int = 512):
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.port = free_port()
        self.dashboard_port = free_port()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> str:
        self._ray(
            "start", "--head", f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats",
            *(f"--{flag}={free_port()}" for flag in self.PORT_FLAGS),
        )
        return self.dashboard_url

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process of this head."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(3)

    def _pids(self) -> list[int]:
        cmdlines = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                with contextlib.suppress(OSError):
                    cmdlines[int(proc.name)] = (proc / "cmdline").read_bytes()
        port = re.compile(rb"[:=]%d(\x00|$)" % self.port)
        ours = {pid for pid, cmd in cmdlines.items() if port.search(cmd)}
        sessions = {m.group(0) for pid in ours for m in re.finditer(rb"/tmp/ray/session_[\w.-]+", cmdlines[pid])}
        sessions.discard(b"/tmp/ray/session_latest")
        ours |= {pid for pid, cmd in cmdlines.items() if any(session in cmd for session in sessions)}
        return sorted(ours)

    def _ray(self, *args: str) -> None:
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_raylet_start_wait_time_s": "120"}
        env.pop("RAY_ADDRESS", None)
        subprocess.run([ray, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 4) -> Iterator[str]:
    """A Ray head for ``ray job submit`` while the block runs; yields its dashboard (job API) URL."""
    head = LocalRayHead(num_cpus=num_cpus)
    try:
        yield head.start()
    finally:
        head.stop()


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
