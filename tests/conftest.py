"""Session-wide real services: S3 on loopback, one local Ray, MLflow on a sqlite file or the team server.

Started once per test session (each Ray start costs seconds) and shared by every layer's tests.
"""

from __future__ import annotations

import os
import uuid

import pytest

from datastore.objectstore import ObjectStoreConfig
from infra.local.catalogue import CatalogueEntry, entry
from infra.local.services import LOCAL_KEYS, LocalMlflow, LocalObjectStore, create_bucket, fault_proxied

os.environ.update(LOCAL_KEYS)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("BRAINDINO_PSEUDONYM_KEY", "test-only-pseudonym-key")


@pytest.fixture(scope="session")
def object_store() -> ObjectStoreConfig:
    """A real S3 endpoint (moto's server) on 127.0.0.1."""
    server = LocalObjectStore()
    config = server.start()
    yield config
    server.stop()


@pytest.fixture
def bucket(object_store: ObjectStoreConfig) -> str:
    """A fresh, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    create_bucket(object_store, name)
    return name


@pytest.fixture
def flaky_store(object_store: ObjectStoreConfig):
    """``(config, proxy)``: the session's S3 endpoint behind a fault-injecting proxy for one test; the
    config goes to the code under test, the proxy injects faults (none until told) and counts them."""
    with fault_proxied(object_store) as pair:
        yield pair


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session; ``address="local"`` never attaches to a developer's cluster."""
    import ray
    from ray.data import DataContext

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 2**20, configure_logging=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_local(tmp_path) -> LocalMlflow:
    """MLflow on a fresh sqlite file with a local artifact root, set as the tracking URI."""
    import mlflow

    local = LocalMlflow(tmp_path / "mlflow")
    local.root.mkdir()
    mlflow.set_tracking_uri(local.tracking_uri)
    yield local
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def team_mlflow(object_store):
    """The team MLflow server of infra/k8s/mlflow.yaml on loopback, started from that manifest: runs and the
    registry in a local PostgreSQL, artifacts in the local S3 served through the server. Started once, by the
    first test that asks (about 20 s)."""
    from infra.local.postgres import server_binaries
    from infra.local.team_mlflow import team_mlflow as start

    try:
        server_binaries()
    except FileNotFoundError as err:
        if os.geteuid() == 0:
            raise  # `make test` installs them as root: missing here is a failure
        pytest.skip(str(err))
    with start(object_store) as server:
        yield server


@pytest.fixture
def gloo_rank():
    """A one-rank gloo process group for the test (collectives and DTensors without spawning)."""
    from tests.distributed import one_rank_group

    with one_rank_group():
        yield


def real_scan(name: str) -> CatalogueEntry:
    """The catalogue entry, or skip the test when its package is not installed here."""
    item = entry(name)
    if not item.available:
        pytest.skip(f"{name} not available: {item.install_hint}")
    return item
