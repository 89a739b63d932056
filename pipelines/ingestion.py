"""``braindino ingest``: raw scans in object storage -> zarr volumes, WebDataset shards and the manifest.

Locally: ``braindino ingest --config configs/ingest.yaml --dataset configs/datasets/icbm152.yaml`` (or
``--all`` for every spec in ``datasets_dir``). On a cluster:
``ray job submit --working-dir . -- python pipelines/ingestion.py --config configs/ingest.yaml --all``;
with ``RAY_ADDRESS`` set the job attaches to that cluster instead of starting a local Ray.
Each run is incremental (the manifest is the ledger) and is logged to MLflow as an ingest run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from braindino.config import flatten, to_dict
from datastore.retry import StoreUnavailable
from datastore.upgrade import upgrade_manifest
from ingest.job import FaultHook, run_ingest
from ingest.lease import checking, hold_lease
from ingest.planning import locate_scan, preview_ingest
from ingest.report import IngestReport
from ingest.settings import INGEST_VERSION, IngestSettings
from ingest.spec import DatasetSpec, load_spec, spec_paths
from pipelines.console import console, open_console
from pipelines.failures import UserFacingError, entry
from pipelines.jobs import connect_ray, job_parser, load_job_config
from pipelines.shared_storage import require_shared_storage
from pipelines.tracking import TrackingConfig, provenance_tags, use_experiment


EXAMPLES = """  braindino ingest --config configs/ingest.yaml --dataset configs/datasets/icbm152.yaml
  braindino ingest --config configs/ingest.yaml --all --dry-run        (what a run would process)
  ray job submit --working-dir . -- python pipelines/ingestion.py --config configs/ingest.yaml --all"""


@dataclass(frozen=True)
class IngestConfig:
    datasets: list[str] = field(default_factory=list)  # dataset spec YAML files
    datasets_dir: str = "configs/datasets"  # what --all ingests
    ray_cpus: int = 2  # local Ray only; ignored when RAY_ADDRESS names a cluster
    ingest: IngestSettings = field(default_factory=IngestSettings)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="braindino-ingest"))


def ingest(config: IngestConfig, fault_hook: FaultHook | None = None) -> IngestReport:
    """Run one incremental ingest of ``config.datasets``, print its summary and log it to MLflow."""
    specs = load_specs(config.datasets)
    out = console()
    output = config.ingest.output.rstrip("/")
    out.intro(f"ingest {len(specs)} dataset{'s' if len(specs) != 1 else ''} into {output}", {
        **{spec.name: spec.source for spec in specs},
        "output": f"{output} (manifest/, shards/, zarr/, qc/)",
        "MLflow": f"experiment {config.tracking.experiment!r} at {config.tracking.resolved_uri()}",
    })
    config.ingest.storage.retries.export()  # MLflow's S3 artifact uploads retry alike
    connect_ray(config.ray_cpus)
    require_shared_storage({"ingest.output": config.ingest.output, **{f"{s.name}.source": s.source for s in specs}})
    with hold_lease(config.ingest.output, config.ingest.storage, owner="braindino ingest") as lease:
        report = run_ingest(specs, config.ingest, checking(lease, fault_hook), out.progress)
    out.say(report.summary())
    for item in report.quarantined:
        out.warn(f"quarantined {item['dataset']}/{item['source_key']}: {item['reason']}: {item['detail']}")
    for item in report.failed:
        out.warn(f"not ingested {item['dataset']}/{item['source_key']}: {item['reason']}: {item['detail']}")
    run_id = log_run(config, specs, report)
    out.summary({
        "manifest": f"{output}/manifest/v{report.manifest_version:06d}.json",
        "shards": f"{output}/shards/", "zarr volumes": f"{output}/zarr/",
        **{f"QC montage ({dataset})": path for dataset, path in report.qc.items()},
        "MLflow run": run_id,
    })
    return report


def load_specs(paths: list[str]) -> list[DatasetSpec]:
    """The dataset specs at ``paths``; exits when there are none (a run, a preview or a lookup needs one)."""
    if not paths:
        raise UserFacingError("ingest: name at least one dataset spec (--dataset FILE, or --all for every spec in datasets_dir)")
    return [load_spec(path) for path in paths]


def log_run(config: IngestConfig, specs: list[DatasetSpec], report: IngestReport) -> str:
    """Params (no credentials, no keys), metrics, summary, quarantine list and QC montages as one MLflow run; its id."""
    import mlflow

    settings = config.ingest
    use_experiment(config.tracking)
    params = {
        "datasets": ",".join(spec.name for spec in specs),
        "output": settings.output,
        "shard_size": settings.shard_size,
        "shuffle_seed": settings.shuffle_seed,
        "concurrency": settings.concurrency,
        "ingest_version": INGEST_VERSION,
        **flatten(to_dict(settings.preprocess), "preprocess."),
        **flatten(to_dict(settings.policy), "policy."),
    }
    with mlflow.start_run(run_name=f"ingest-{report.run_id}") as run:
        mlflow.set_tags({**provenance_tags(), "job": "ingest", "ingest.run_id": report.run_id,
                         "ingest.committed": str(report.committed)})
        mlflow.log_params(params)
        mlflow.log_metrics(report.metrics())
        mlflow.log_text(report.summary(), "summary.txt")
        mlflow.log_dict({"by_reason": report.by_reason(), "quarantined": report.quarantined}, "quarantine.json")
        if report.failed:
            mlflow.log_dict({"store_unavailable": report.failed}, "failed.json")
        with tempfile.TemporaryDirectory() as tmp:
            fs, _ = settings.storage.resolve(settings.output)
            for dataset, uri in report.qc.items():
                _, path = settings.storage.resolve(uri)
                with fs.open_input_stream(path) as stream:
                    (Path(tmp) / f"{dataset}.png").write_bytes(stream.read())
            if report.qc:
                mlflow.log_artifacts(tmp, "qc")
    return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("braindino ingest", "Raw scans in object storage -> zarr volumes, WebDataset shards and the "
                        "manifest; incremental (the manifest is the ledger), logged to MLflow.", EXAMPLES)
    parser.add_argument("--dataset", action="append", default=[], metavar="SPEC.yaml",
                        help="a dataset spec to ingest (repeatable)")
    parser.add_argument("--all", action="store_true", help="ingest every spec in datasets_dir")
    parser.add_argument("--locate", metavar="SCAN_ID", help="print the stored key of a scan pseudonym (for "
                        "datasets with redact_keys) and exit; prints nothing anywhere else")
    parser.add_argument("--dry-run", action="store_true", help="list what a run would process (new and changed "
                        "scans per dataset, from the listings and the manifest) and exit; writes nothing")
    parser.add_argument("--upgrade-manifest", action="store_true", help="upgrade the manifest of ingest.output "
                        "written by an older layout (a run does this first too) and exit")
    args = parser.parse_args(argv)
    config = load_job_config(IngestConfig, args)
    if args.upgrade_manifest:
        settings = config.ingest
        version = upgrade_manifest(settings.output, settings.storage, settings.preprocess)
        print(f"{settings.output}: manifest upgraded, v{version:06d}.json" if version else
              f"{settings.output}: manifest already current (or empty), nothing written")
        return
    chosen = [str(p) for p in spec_paths(config.datasets_dir)] if args.all else args.dataset or config.datasets
    if args.locate:
        found = locate_scan(load_specs(chosen), config.ingest.storage, args.locate)
        print("\n".join(found) or f"no scan of {', '.join(chosen)} has the pseudonym {args.locate}")
        return
    if args.dry_run:
        print(preview_ingest(load_specs(chosen), config.ingest).summary())
        return
    open_console("ingest", args.verbose)
    ingest(replace(config, datasets=chosen))


if __name__ == "__main__":
    entry(main)
