"""``braindino status``: what an output root and an MLflow store hold, at a glance.

The latest manifest version with its counts per dataset, the quarantined scans by reason, the last runs
of each job with their state and the registered models with their aliases, printed as text and written
as one self-contained HTML page beside the QC montages (``qc/status.html`` under the output root).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from datastore.files import write_bytes
from datastore.manifest import ManifestStore
from datastore.objectstore import ObjectStoreConfig
from ingest.qc import QC_FOLDER
from pipelines.console import console
from pipelines.jobs import run_job
from pipelines.registry import ENCODER_MODEL, HEAD_MODEL_PREFIX
from pipelines.tracking import TrackingConfig

JOB_EXPERIMENTS = {"ingest": "braindino-ingest", "pretrain": "braindino-pretrain", "evaluate": "braindino-evaluate"}
PAGE = "status.html"


@dataclass(frozen=True)
class StatusConfig:
    output: str = ".local/ingest"  # the ingest output root: s3://bucket/prefix or a local folder
    storage: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # its tracking URI is read
    experiments: dict[str, str] = field(default_factory=lambda: dict(JOB_EXPERIMENTS))  # job -> MLflow experiment
    runs_per_job: int = 3
    page: bool = True  # write qc/status.html under the output root


@dataclass(frozen=True)
class DatasetCounts:
    dataset: str
    scans_ok: int
    scans_quarantined: int
    subjects: int  # distinct subject pseudonyms among the ok scans
    slices: int  # active slices


@dataclass(frozen=True)
class JobRun:
    job: str
    run_id: str
    name: str
    state: str  # MLflow's run status (RUNNING, FINISHED, FAILED, KILLED), or the job's own status tag when it set one
    started: str  # UTC, ISO 8601


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    versions: int
    latest: int
    aliases: dict[str, str]  # alias -> version


@dataclass(frozen=True)
class Status:
    output: str
    tracking_uri: str
    manifest_version: int  # 0: nothing committed
    committed_at: str
    datasets: list[DatasetCounts]
    quarantined: dict[str, int]  # reason -> current quarantined scans
    runs: list[JobRun]
    models: list[RegisteredModel]
    montages: dict[str, str] = field(default_factory=dict)  # dataset -> the latest QC montage's path under the root

    def totals(self) -> DatasetCounts:
        return DatasetCounts("total", *(sum(getattr(d, name) for d in self.datasets)
                                        for name in ("scans_ok", "scans_quarantined", "subjects", "slices")))


def manifest_counts(output: str, storage: ObjectStoreConfig) -> tuple[int, str, list[DatasetCounts], dict[str, int]]:
    """``(version, committed_at, counts per dataset, quarantined by reason)`` of the root's latest manifest."""
    store = ManifestStore(output, storage)
    manifest = store.latest()
    if not manifest.version:
        return 0, "", [], {}
    scans = manifest.current_scans()
    slices = Counter(manifest.active_slices()["dataset"].to_pylist())
    counts = []
    for dataset in sorted({row.dataset for row in scans} | set(slices)):
        rows = [row for row in scans if row.dataset == dataset]
        ok = [row for row in rows if row.status == "ok"]
        counts.append(DatasetCounts(dataset, len(ok), len(rows) - len(ok), len({row.subject for row in ok}), slices[dataset]))
    reasons = Counter(row.reason for row in scans if row.status == "quarantined")
    return manifest.version, store.commit_record(manifest.version)["committed_at"], counts, dict(sorted(reasons.items()))


def latest_montages(output: str, storage: ObjectStoreConfig) -> dict[str, str]:
    """dataset -> path (relative to the root) of the newest QC montage of each dataset (run ids sort by time)."""
    fs, base = storage.resolve(output)
    infos = fs.get_file_info(pafs.FileSelector(f"{base}/{QC_FOLDER}", recursive=True, allow_not_found=True))
    montages: dict[str, str] = {}
    for info in sorted((i for i in infos if i.is_file and i.extension == "png"), key=lambda i: i.path):
        montages[info.base_name.removesuffix(".png")] = info.path.removeprefix(f"{base}/")
    return montages


def job_runs(client, experiments: dict[str, str], per_job: int) -> list[JobRun]:
    """The last ``per_job`` runs of each job's experiment, newest first."""
    runs = []
    for job, name in experiments.items():
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                      max_results=per_job):
            state = run.data.tags.get("braindino.status", "").upper() or run.info.status
            started = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(run.info.start_time / 1000))
            runs.append(JobRun(job, run.info.run_id, run.info.run_name or "", state, started))
    return runs


def registered_models(client) -> list[RegisteredModel]:
    """The encoder and every task head in the registry, with their version count, latest version and aliases."""
    models = []
    for model in client.search_registered_models(max_results=1000):
        if model.name != ENCODER_MODEL and not model.name.startswith(HEAD_MODEL_PREFIX):
            continue
        versions = [int(v.version) for v in client.search_model_versions(f"name = '{model.name}'")]
        models.append(RegisteredModel(model.name, len(versions), max(versions, default=0),
                                      {alias: str(version) for alias, version in sorted(model.aliases.items())}))
    return sorted(models, key=lambda m: (m.name != ENCODER_MODEL, m.name))


def collect_status(config: StatusConfig) -> Status:
    from mlflow.tracking import MlflowClient

    uri = config.tracking.resolved_uri()
    client = MlflowClient(uri)
    version, committed_at, datasets, quarantined = manifest_counts(config.output, config.storage)
    return Status(config.output, uri, version, committed_at, datasets, quarantined,
                  job_runs(client, config.experiments, config.runs_per_job), registered_models(client),
                  latest_montages(config.output, config.storage))


def table(headers: list[str], rows: list[list[object]]) -> list[str]:
    """Plain-text columns: text left-aligned, numbers right-aligned."""
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    return ["  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip() for row in cells]


DATASET_HEADERS = ["dataset", "scans ok", "quarantined", "subjects", "slices"]
RUN_HEADERS = ["job", "state", "started", "run", "name"]
MODEL_HEADERS = ["model", "versions", "latest", "aliases"]


def dataset_rows(status: Status) -> list[list[object]]:
    return [[d.dataset, d.scans_ok, d.scans_quarantined, d.subjects, d.slices] for d in [*status.datasets, status.totals()]]


def run_rows(status: Status) -> list[list[object]]:
    return [[r.job, r.state, r.started, r.run_id, r.name] for r in status.runs]


def model_rows(status: Status) -> list[list[object]]:
    return [[m.name, m.versions, m.latest, ", ".join(f"@{a} -> v{v}" for a, v in m.aliases.items()) or "-"]
            for m in status.models]


def render_text(status: Status) -> str:
    lines = [f"braindino status: {status.output} (MLflow {status.tracking_uri})"]
    if status.manifest_version:
        lines += [f"manifest v{status.manifest_version:06d}, committed {status.committed_at}", *indent(table(DATASET_HEADERS, dataset_rows(status)))]
    else:
        lines.append("manifest: nothing committed yet (run braindino ingest)")
    reasons = ", ".join(f"{reason} {count}" for reason, count in status.quarantined.items())
    lines.append(f"quarantined scans by reason: {reasons or 'none'}")
    lines += ["last runs:", *indent(table(RUN_HEADERS, run_rows(status)))] if status.runs else ["last runs: none"]
    lines += ["registered models:", *indent(table(MODEL_HEADERS, model_rows(status)))] if status.models else ["registered models: none"]
    return "\n".join(lines)


def indent(lines: list[str]) -> list[str]:
    return [f"  {line}" for line in lines]


def write_page(status: Status, storage: ObjectStoreConfig) -> str:
    """Write the HTML page to ``qc/status.html`` under the output root; returns its path or URI."""
    from pipelines.status_page import render_html

    fs, base = storage.resolve(status.output)
    montages = {}
    for dataset, relative in status.montages.items():
        with fs.open_input_file(f"{base}/{relative}") as png:
            montages[dataset] = png.read()
    write_bytes(fs, f"{base}/{QC_FOLDER}/{PAGE}", render_html(status, montages).encode())
    return f"{status.output.rstrip('/')}/{QC_FOLDER}/{PAGE}"


def run(config: StatusConfig) -> Status:
    status = collect_status(config)
    console().say(render_text(status))
    if config.page:
        console().say(f"page: {write_page(status, config.storage)}")
    return status


def report(config: StatusConfig) -> None:
    """The command: the status, then the closing line that names the log."""
    run(config)
    console().summary()


def main(argv=None) -> None:
    run_job("braindino status", "What an output root and an MLflow store hold, at a glance: manifest counts, "
            "quarantine reasons, the last runs of each job and the registered models.", StatusConfig, report, argv,
            examples="braindino status --set output=s3://braindino-data/ingest "
                     "--set tracking.tracking_uri=http://mlflow:5000")
