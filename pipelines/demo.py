"""``braindino demo``: local services up, bundled real MRI into a bucket, then each stage in turn."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from braindino.config import load_config
from infra.local.bundled import missing_entries, upload_bundled
from infra.local.ray_nodes import local_ray_head
from infra.local.services import LocalStack, create_bucket, local_stack
from pipelines.ingestion import IngestConfig
from pipelines.jobs import run_job, submit_job


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path(".local")
    bucket: str = "braindino-raw"
    datasets: dict[str, list[str]] = field(default_factory=lambda: {
        "icbm152": ["icbm2009c_t1", "icbm2009c_t2"],
        "colin27": ["colin27_t1"],
        "heudiconv": ["heudiconv_dwi"],
    })
    ingest_config: Path = Path("configs/ingest.yaml")  # its datasets: configs/datasets/<name>.yaml
    pretrain_config: Path = Path("configs/pretrain/tiny-cpu.yaml")  # both stages, a few minutes on two cores


def run(config: DemoConfig) -> None:
    for item in missing_entries(config.datasets):
        print(f"[demo] skipping {item.name}: its source is not installed ({item.install_hint})")
    os.environ.setdefault("BRAINDINO_ENV", "dev")  # the public dev pseudonym key unless a real one is set
    with local_stack(config.workdir) as stack:  # the stack puts its S3 keys in the environment
        print(f"[demo] S3 on {stack.store.endpoint_url}; MLflow at {stack.mlflow.tracking_uri}")
        create_bucket(stack.store, config.bucket)
        uploaded = upload_bundled(stack.store, config.bucket, config.datasets)
        print(f"[demo] uploaded bundled real MRI to s3://{config.bucket}/raw/")
        for dataset, keys in uploaded.items():
            print(f"  {dataset}: {len(keys)} objects")
        with local_ray_head() as address:  # a cluster as on Kubernetes: it inherits the environment above
            print(f"[demo] Ray head: dashboard and job API at {address}")
            run_ingest_stage(config, stack, address)
            run_pretrain_stage(config, stack, address)
        print(f"[demo] MLflow UI: {stack.mlflow.ui_command()}")


def tracking_overrides(stack: LocalStack) -> list[str]:
    return [f"tracking.tracking_uri={stack.mlflow.tracking_uri}", f"tracking.artifact_root={stack.mlflow.artifact_root}"]


def run_ingest_stage(config: DemoConfig, stack: LocalStack, address: str) -> None:
    """``ray job submit`` the ingest of the uploaded scans into ``workdir/ingest``; the job prints the summary."""
    output = (config.workdir / "ingest").resolve()
    datasets_dir = load_config(IngestConfig, config.ingest_config).datasets_dir
    print(f"[demo] ingesting s3://{config.bucket}/raw/ into {output}")
    submit_job(address, "ingestion.py", [
        "--config", str(config.ingest_config),
        *(item for name in config.datasets for item in ("--dataset", f"{datasets_dir}/{name}.yaml")),
        "--set", f"ingest.output={output}", "--set", f"ingest.storage.endpoint_url={stack.store.endpoint_url}",
        *(item for override in tracking_overrides(stack) for item in ("--set", override)),
    ])


def run_pretrain_stage(config: DemoConfig, stack: LocalStack, address: str) -> None:
    """``ray job submit`` the tiny two-stage pretraining to the local head; the job registers the encoder."""
    import time

    from mlflow.tracking import MlflowClient

    from pipelines.pretrain import submit
    from pipelines.registry import DIGEST_TAG, ENCODER_MODEL

    name = time.strftime("demo-%Y%m%d-%H%M%S")
    print(f"[demo] pretraining {config.pretrain_config}")
    run_id = submit(address, config.pretrain_config, [
        f"data.manifest={(config.workdir / 'ingest').resolve()}", *tracking_overrides(stack),
        f"checkpoint.storage_path={(config.workdir / 'ray_results').resolve()}",
    ], stack.mlflow.tracking_uri, name)
    print(f"[demo] pretraining run {name}: open http://127.0.0.1:5000 -> experiment braindino-pretrain -> run {run_id}")
    print("[demo]   metrics (loss terms, lr, feature std, images/s, knn_probe_accuracy), artifacts pca/*.png")
    version = MlflowClient(stack.mlflow.tracking_uri).get_model_version_by_alias(ENCODER_MODEL, "candidate")
    print(f"[demo] encoder registered as models:/{ENCODER_MODEL}@candidate (version {version.version}, commit "
          f"{version.tags['git.commit']}, dirty {version.tags['git.dirty']}, weights sha256 {version.tags[DIGEST_TAG]}); "
          "promote with 'braindino register promote --version N'")


def main(argv=None) -> None:
    run_job("braindino demo", __doc__, DemoConfig, run, argv)
