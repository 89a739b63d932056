"""The claim in miniature: pretrain on every bundled real scan on CPU, then evaluate against a random init.

    python benchmarks/claim_in_miniature.py [--config configs/claim.yaml]

Runs the demo's chain with ``configs/claim.yaml``: local S3 and MLflow under ``.local/claim``, ingest of every
bundled scan, the ``small-cpu`` two-stage pretraining (tens of minutes on two cores), then the claim suite
(``configs/evaluate/claim.yaml``: every bundled task, label fractions 25/50/100 %, three seeds) for the
registered encoder and a random init of the same size. The results table and the label-efficiency curves
of that evaluation run are copied to ``benchmarks/claim/``. Not a CI test. The same
``braindino evaluate --config ...`` is what a user runs with a real encoder on real cohorts.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from braindino.config import load_config
from infra.local.services import LocalMlflow
from pipelines.console import console
from pipelines.demo import DemoConfig, main as demo
from pipelines.failures import entry

OUT = Path(__file__).resolve().parent / "claim"


def collect(config: DemoConfig) -> Path:
    """Copy the latest evaluation run's table and curves to ``benchmarks/claim/``."""
    local = LocalMlflow(config.workdir)
    client = MlflowClient(local.tracking_uri)
    experiment = client.get_experiment_by_name("braindino-evaluate")
    (latest,) = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=latest.info.run_id, tracking_uri=local.tracking_uri))
    OUT.mkdir(exist_ok=True)
    shutil.copyfile(artifacts / "results.md", OUT / "results.md")
    for curves in (artifacts / "tasks").glob("*/curves.png"):
        shutil.copyfile(curves, OUT / f"{curves.parent.name}.png")
    return OUT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/claim.yaml")
    path = parser.parse_args().config
    entry(demo, ["--config", path])
    console().say(f"[claim] table and curves in {collect(load_config(DemoConfig, path))}")


if __name__ == "__main__":
    main()
