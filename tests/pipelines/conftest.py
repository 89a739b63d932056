"""Pretraining fixtures: real catalogue scans ingested once per session into the local S3 server.

The ``ray job submit`` test stops its own Ray head, so it is moved to the very end of the session
(after every test that uses the session's Ray).
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import cloudpickle

import pytest

from braindino.config import load_config
from braindino.volumes import PreprocessSpec
from infra.local.services import LocalMlflow, create_bucket
from tests.overrides import store_overrides

TINY = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny-cpu.yaml"
PREPROCESS = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96)
RUN_LAST = ("test_job_submit.py",)


def pytest_collection_modifyitems(session, config, items):
    last = [item for item in items if item.path.name in RUN_LAST]
    items[:] = [item for item in items if item.path.name not in RUN_LAST] + last


@pytest.fixture(scope="session")
def ingested(object_store, ray_session):
    """ICBM152 2009c T1 and T2 (real, from the catalogue) ingested by the ingest job to ``s3://BUCKET/ingest``."""
    from infra.local.catalogue import entry
    from ingest.job import run_ingest
    from ingest.settings import IngestSettings
    from ingest.spec import DatasetSpec, SequenceRule

    names = ("icbm2009c_t1", "icbm2009c_t2")
    for name in names:
        if not entry(name).available:
            pytest.skip(f"{name} not available: {entry(name).install_hint}")
    bucket = "pretrain-data"
    create_bucket(object_store, bucket)
    client = object_store.boto3_client()
    for name in names:
        path = entry(name).path
        client.upload_file(str(path), bucket, f"raw/icbm152/{path.name}")
    spec = DatasetSpec(name="icbm152", source=f"s3://{bucket}/raw/icbm152", licence="MNI ICBM152 templates",
                       subject="icbm152", include=["*.nii", "*.nii.gz"],
                       sequence_rules=[SequenceRule("_t1", "T1w"), SequenceRule("_t2", "T2w")])
    output = f"s3://{bucket}/ingest"
    report = run_ingest([spec], IngestSettings(output=output, storage=object_store, preprocess=PREPROCESS,
                                               shard_size=64))
    assert report.committed, report.summary()
    return output


@pytest.fixture(scope="module")
def tiny_overrides(object_store, ingested):
    """``tiny_overrides(root)``: ``--set`` items pointing the tiny config at the ingested shards, MLflow and
    checkpoints under ``root``."""

    def build(root: Path) -> list[str]:
        mlflow = LocalMlflow(root / "mlflow")
        mlflow.root.mkdir(parents=True, exist_ok=True)
        return [
            f"data.manifest={ingested}",
            *store_overrides("data.store", object_store),
            f"tracking.tracking_uri={mlflow.tracking_uri}",
            f"tracking.artifact_root={mlflow.artifact_root}",
            f"checkpoint.storage_path={root / 'ray_results'}",
        ]

    return build


@pytest.fixture(scope="module")
def tiny_config(tiny_overrides):
    """``tiny_config(root, *overrides)``: the tiny CPU config as a ``PretrainConfig``."""
    from pipelines.train.config import PretrainConfig

    def build(root: Path, *overrides: str) -> PretrainConfig:
        return load_config(PretrainConfig, TINY, [*tiny_overrides(root), *overrides])

    return build


@pytest.fixture
def no_unpickling():
    """``with no_unpickling(): ...``: every unpickling entry point (pickle, cloudpickle) raises inside the block."""
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    @contextlib.contextmanager
    def guard():
        with pytest.MonkeyPatch.context() as patch:
            for module in (pickle, cloudpickle):
                for name in ("load", "loads", "Unpickler"):
                    if hasattr(module, name):
                        patch.setattr(module, name, refuse)
            yield

    return guard
