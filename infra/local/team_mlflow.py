"""The team MLflow server of ``infra/k8s/mlflow.yaml``, started on this machine from that manifest.

The command and every setting come from the Deployment's container: its literal environment as
written, its Secret references filled with local values (PostgreSQL from ``LocalPostgres``, keys
and endpoint of the local S3), and only the listen address and port changed (127.0.0.1 and a free
port). A setting added to the manifest reaches the local server too; a new Secret reference without a
local value stops the start. The Service's name is what the allowed hosts must accept.

    python -m infra.local.team_mlflow     # PostgreSQL + S3 on loopback + this server, until Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from infra.local.postgres import LocalPostgres
from infra.local.services import LocalObjectStore, create_bucket, free_port
from datastore.objectstore import ObjectStoreConfig

MANIFEST = Path(__file__).resolve().parents[1] / "k8s" / "mlflow.yaml"


@dataclass(frozen=True)
class ServerManifest:
    """The parts of the manifest a local start needs."""

    command: list[str]
    env: dict[str, str]  # literal values
    secret_env: dict[str, tuple[str, str, bool]]  # variable -> (Secret, key, optional)
    service_host: str  # "<Service name>:<port>", the Host header in-cluster clients send

    @property
    def artifacts_bucket(self) -> str:
        return self.env["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/", 1)[0]


def read_manifest(path: Path = MANIFEST) -> ServerManifest:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    service = next(d for d in documents if d["kind"] == "Service")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")
    env, secret_env = {}, {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            secret_env[var["name"]] = (ref["name"], ref["key"], bool(ref.get("optional", False)))
    port = service["spec"]["ports"][0]["port"]
    return ServerManifest([*container["command"], *container.get("args", [])], env, secret_env,
                          f"{service['metadata']['name']}:{port}")


def local_secrets(backend_uri: str, store: ObjectStoreConfig) -> dict[tuple[str, str], str]:
    """Local values for the Secrets the cluster provides."""
    return {
        ("braindino-mlflow-db", "url"): backend_uri,
        ("braindino-object-store", "endpoint_url"): store.endpoint_url or "",
        ("braindino-object-store", "access_key_id"): store.access_key or "",
        ("braindino-object-store", "secret_access_key"): store.secret_key or "",
    }


def server_environment(manifest: ServerManifest, secrets: dict[tuple[str, str], str], port: int) -> dict[str, str]:
    """The server's environment: the manifest's, Secret references resolved, listening on 127.0.0.1:``port``."""
    env = {**manifest.env, "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port)}
    for name, (secret, key, optional) in manifest.secret_env.items():
        if (secret, key) in secrets and secrets[secret, key]:
            env[name] = secrets[secret, key]
        elif not optional:
            raise KeyError(f"{MANIFEST.name} reads {name} from Secret {secret}/{key}, which has no local value")
    return env


class TeamMlflow:
    """``start()`` the manifest's server against ``backend_uri`` and ``store``; returns its URL."""

    def __init__(self, backend_uri: str, store: ObjectStoreConfig, manifest: ServerManifest | None = None):
        self.manifest = manifest or read_manifest()
        self.store = store
        self.port = free_port()
        self.env = server_environment(self.manifest, local_secrets(backend_uri, store), self.port)
        self.log = Path(tempfile.mkstemp(prefix="braindino-mlflow-", suffix=".log")[1])
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> str:
        create_bucket(self.store, self.manifest.artifacts_bucket)
        bin_dir = str(Path(sys.executable).parent)  # this environment's mlflow, as the image's is on its PATH
        base = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "HOME": os.environ.get("HOME", "/tmp"),
                "LANG": "C.UTF-8"}
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(self.manifest.command, env={**base, **self.env}, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self._process.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group (it forks workers), SIGKILL what is left."""
        if self._process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=wait)
                break
        self._process = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def team_mlflow(store: ObjectStoreConfig) -> Iterator[TeamMlflow]:
    """PostgreSQL plus the manifest's MLflow server on loopback, artifacts in ``store``."""
    database = LocalPostgres()
    server = None
    try:
        server = TeamMlflow(database.start(), store)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        database.stop()


def main() -> None:
    store = LocalObjectStore()
    config = store.start()
    try:
        with team_mlflow(config) as server:
            print(f"MLflow (PostgreSQL + S3 artifacts at {config.endpoint_url}) on {server.url}\n"
                  f"  export MLFLOW_TRACKING_URI={server.url}   (Ctrl-C stops all three)", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        store.stop()


if __name__ == "__main__":
    main()
