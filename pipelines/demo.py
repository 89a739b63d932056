"""``braindino demo``: local services up, bundled real MRI into a bucket, then each stage in turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from infra.local.bundled import missing_entries, upload_bundled
from infra.local.services import create_bucket, local_stack
from pipelines.jobs import run_job


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path(".local")
    bucket: str = "braindino-raw"
    datasets: dict[str, list[str]] = field(default_factory=lambda: {
        "icbm152": ["icbm2009c_t1", "icbm2009c_t2"],
        "colin27": ["colin27_t1"],
        "heudiconv": ["heudiconv_dwi"],
    })


def run(config: DemoConfig) -> None:
    for item in missing_entries(config.datasets):
        print(f"[demo] skipping {item.name}: its source is not installed ({item.install_hint})")
    with local_stack(config.workdir) as stack:
        print(f"[demo] S3 on {stack.store.endpoint_url}; MLflow at {stack.mlflow.tracking_uri}")
        create_bucket(stack.store, config.bucket)
        uploaded = upload_bundled(stack.store, config.bucket, config.datasets)
        print(f"[demo] uploaded bundled real MRI to s3://{config.bucket}/raw/")
        for dataset, keys in uploaded.items():
            print(f"  {dataset}: {len(keys)} objects would be ingested")
            for key in keys:
                print(f"    s3://{config.bucket}/{key}")
        print(f"[demo] MLflow UI: {stack.mlflow.ui_command()}")


def main(argv=None) -> None:
    run_job("braindino demo", __doc__, DemoConfig, run, argv)
