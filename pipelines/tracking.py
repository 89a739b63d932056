"""MLflow glue shared by every job: where runs go, and the tags each run carries."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path(".local")


@dataclass(frozen=True)
class TrackingConfig:
    """Where a job logs. Empty values fall back to $MLFLOW_TRACKING_URI, then a sqlite file under .local/.

    Against a tracking server (an http(s) URI) with no artifact root set, the server places artifacts
    (a team server serves them from its own store, so jobs need no bucket credentials for them).
    """

    tracking_uri: str = ""
    experiment: str = "braindino"
    artifact_root: str = ""

    def resolved_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(DEFAULT_ROOT / 'mlflow.db').resolve()}"

    def resolved_artifact_root(self) -> str | None:
        explicit = self.artifact_root or os.environ.get("BRAINDINO_ARTIFACT_ROOT")
        if explicit or self.resolved_uri().startswith(("http://", "https://")):
            return explicit or None
        return (DEFAULT_ROOT / "artifacts").resolve().as_uri()


def use_experiment(config: TrackingConfig) -> str:
    """Point MLflow at ``config`` and return the experiment id, creating it with an explicit artifact root.

    The artifact location is set at creation so artifacts never land in a worker's temp CWD.
    """
    import mlflow

    from pipelines.console import route_library_logs

    route_library_logs()  # MLflow installs its console handler on import
    mlflow.set_tracking_uri(config.resolved_uri())
    existing = mlflow.get_experiment_by_name(config.experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        root = config.resolved_artifact_root()
        location = f"{root.rstrip('/')}/{config.experiment}" if root else None
        experiment_id = mlflow.create_experiment(config.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# Set by ``pipelines.jobs.submit_job`` in the job's runtime environment: the working directory Ray
# uploads carries no ``.git``, so the submitting side records the revision for the driver.
COMMIT_ENV = "BRAINDINO_GIT_COMMIT"
DIRTY_ENV = "BRAINDINO_GIT_DIRTY"
REPO_ROOT = Path(__file__).resolve().parents[1]


def source_revision(repo: Path = REPO_ROOT) -> dict[str, str]:
    """``{"git.commit": SHA, "git.dirty": "true"|"false"}`` of the code this process runs.

    A submitted job reads what the submitter recorded (``COMMIT_ENV``/``DIRTY_ENV``); a local run asks
    git about ``repo``. Dirty means tracked changes or untracked files git does not ignore, i.e. the
    code that ran is not exactly the commit. Without either source both read ``unknown``.
    """
    if os.environ.get(COMMIT_ENV):
        return {"git.commit": os.environ[COMMIT_ENV], "git.dirty": os.environ.get(DIRTY_ENV, "unknown")}
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain") if commit is not None else None
    return {"git.commit": commit or "unknown",
            "git.dirty": "unknown" if status is None else str(bool(status.strip())).lower()}


def revision_env(repo: Path = REPO_ROOT) -> dict[str, str]:
    """The environment variables that carry ``repo``'s revision into a submitted job."""
    revision = source_revision(repo)
    return {COMMIT_ENV: revision["git.commit"], DIRTY_ENV: revision["git.dirty"]}


def provenance_tags() -> dict[str, str]:
    """Git commit (and whether the tree was dirty) and the versions of the packages a run depends on."""
    tags = source_revision()
    for package in ("braindino", "torch", "ray", "mlflow", "numpy"):
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tags


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=repo)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
