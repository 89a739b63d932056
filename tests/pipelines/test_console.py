"""The tool's own voice: what a command prints on a plain (non-terminal) stdout, and its one-line failures."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local.catalogue import entry as catalogue_entry
from infra.local.services import free_port
from pipelines.failures import EXIT_USER_ERROR, entry, explain
from tests.voice import assert_own_voice, run_braindino

REPO = Path(__file__).resolve().parents[2]


def braindino(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return run_braindino(args, tmp_path / "logs", {**environment, "BRAINDINO_PROGRESS_SECONDS": "0", **env}, REPO, 400)


@pytest.mark.timeout(420)
def test_ingest_speaks_in_its_own_voice_and_keeps_ray_and_mlflow_in_the_log(tmp_path):
    scan = catalogue_entry("nibabel_anatomical")
    (tmp_path / "raw" / "sub-anat").mkdir(parents=True)
    (tmp_path / "raw" / "sub-anat" / "anatomical.nii").write_bytes(scan.path.read_bytes())
    (tmp_path / "tiny.yaml").write_text(f"name: tiny\nsource: {tmp_path / 'raw'}\nlicence: MIT\n")
    output = tmp_path / "out"
    done = braindino(["ingest", "--config", "configs/ingest.yaml", "--dataset", str(tmp_path / "tiny.yaml"),
                      "--set", f"ingest.output={output}", "--set", "ingest.preprocess.spacing=[2.0, 2.0, 2.0]",
                      "--set", "ingest.preprocess.slice_size=64", "--set", "ray_cpus=1",
                      "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                      "--set", f"tracking.artifact_root={(tmp_path / 'artifacts').as_uri()}"],
                     tmp_path, BRAINDINO_ENV="dev")
    assert done.returncode == 0, done.stderr[-3000:]
    lines, logged = assert_own_voice(done, "ingest", tmp_path / "logs",
                                     f"braindino ingest: ingest 1 dataset into {output}")
    assert "  scans: 1/1 scans (100%)" in done.stdout and "  scans ok 1; quarantined 0 (none)" in lines
    assert "Started a local Ray instance" in logged and "mlflow.store" in logged and "py.warnings" in logged


def test_help_is_plain_text_with_examples_and_version_is_there(capsys):
    from pipelines.cli import main

    for command in ("ingest", "pretrain", "register", "evaluate", "serve", "demo"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        printed = capsys.readouterr().out
        assert exited.value.code == 0 and "`" not in printed, printed
        assert re.search(rf"examples?:\n  (braindino {command}|make demo)", printed), printed
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"braindino {importlib.metadata.version('braindino')}"


def test_expected_failures_end_in_one_line_without_traceback(tmp_path, capsys):
    """Config error, missing manifest, missing run, no tasks: one line on stderr, exit 2, before any Ray starts."""
    from pipelines.cli import main

    cases = {
        ("pretrain", "--config", "configs/pretrain/tiny-cpu.yaml", "--set", "stage1.iterationz=3"):
            "error: config error: configs/pretrain/tiny-cpu.yaml: unknown key 'stage1.iterationz' (known keys: "
            "batch_size_per_worker, crops, gram, iterations, masks, schedules)",
        ("pretrain", "--config", "configs/pretrain/tiny-cpu.yaml", "--set", f"data.manifest={tmp_path / 'nothing'}",
         "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"):
            f"error: {tmp_path / 'nothing'} holds no committed manifest (manifest/v*.json): run 'braindino ingest' "
            "into it first, or point data.manifest at an ingest output root",
        ("register", "--config", "configs/pretrain/tiny-cpu.yaml"):
            "error: register: name the pretraining run and its checkpoint: --run-id RUN --checkpoint PATH",
        ("evaluate", "--set", "tasks=[]"):
            "error: evaluate: name at least one task spec in tasks (e.g. --set 'tasks=[configs/tasks/X.yaml]')",
    }
    for argv, line in cases.items():
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        err = capsys.readouterr().err
        assert exited.value.code == EXIT_USER_ERROR, (argv, err)
        assert err.splitlines()[-1] == line and "Traceback" not in err


def run_entry(main, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        entry(main)
    assert exited.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_an_unset_pseudonym_key_is_one_line(monkeypatch, capsys):
    from ingest.deid import pseudonym

    monkeypatch.delenv("BRAINDINO_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("BRAINDINO_ENV", raising=False)
    assert run_entry(lambda argv: pseudonym("sub-01"), capsys) == (
        "error: pseudonym key not set: BRAINDINO_PSEUDONYM_KEY is not set. Set it to the project's secret pseudonym "
        "key (or set BRAINDINO_ENV=dev to use the public dev key for demos and tests)")


def test_a_preprocessing_spec_that_differs_from_the_roots_is_one_line(capsys):
    from ingest.planning import checked_preprocess
    from ingest.settings import IngestSettings

    settings = IngestSettings(output="/data/root")
    previous = type("Previous", (), {"version": 3, "preprocess": {"slice_size": 128}})()
    line = run_entry(lambda argv: checked_preprocess(previous, settings), capsys)
    assert line.startswith("error: preprocessing differs from the output root's: /data/root holds slices made with "
                           "preprocess {'slice_size': 128} (manifest v3)")
    assert line.endswith("Set ingest.preprocess to match, or ingest into a new output root")


def test_a_registry_alias_that_points_nowhere_is_one_line(tmp_path, capsys):
    from pipelines.registry import fetch_encoder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    line = run_entry(lambda argv: fetch_encoder("models:/braindino-encoder@champion", uri), capsys)
    assert re.fullmatch(
        rf"error: models:/braindino-encoder@champion names no registered version at {re.escape(uri)} \(.+\): "
        r"register one \('braindino pretrain' or 'braindino register'\) or point the alias at a version "
        r"\('braindino register promote --version N --alias ALIAS'\)", line), line


def test_an_unreachable_object_store_is_one_line(capsys):
    from datastore.objectstore import ObjectStoreConfig

    endpoint = f"http://127.0.0.1:{free_port()}"
    store = ObjectStoreConfig(endpoint_url=endpoint, access_key="testing", secret_key="testing")
    fs, path = store.resolve("s3://bucket/raw")
    line = run_entry(lambda argv: fs.get_file_info(f"{path}/x"), capsys)
    assert line == "error: object storage is unreachable: start it or fix storage.endpoint_url (AWS_ENDPOINT_URL)"


def test_an_unreachable_mlflow_server_is_one_line(monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    url = f"http://127.0.0.1:{free_port()}"
    line = run_entry(lambda argv: MlflowClient(url).search_experiments(), capsys)
    assert line == (f"error: MLflow server at {url} is unreachable: start it, or point tracking.tracking_uri "
                    "(MLFLOW_TRACKING_URI) at a running one")


def test_a_ray_address_where_nothing_listens_is_one_line_at_once(tmp_path):
    """``ray.init`` would wait minutes for a GCS that is not there; the driver says so in one line instead."""
    address = f"127.0.0.1:{free_port()}"
    environment = {**os.environ, "RAY_ADDRESS": address, "BRAINDINO_LOG_DIR": str(tmp_path / "logs")}
    done = subprocess.run([sys.executable, "-c", "from pipelines.failures import entry\n"
                           "from pipelines.jobs import connect_ray\nentry(lambda argv: connect_ray())"],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USER_ERROR, done.stderr
    assert done.stderr.splitlines() == [f"error: no Ray cluster answers at RAY_ADDRESS={address} (Connection refused): "
                                        "start the cluster (ray start --head), or unset RAY_ADDRESS to run on a local Ray"]


def test_a_failing_command_leaves_running_the_ray_its_caller_started(ray_session, capsys):
    """Only a Ray the command itself started is shut down on failure; the test session's stays usable."""
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["pretrain", "--help"])
    assert exited.value.code == 0
    assert run_entry(lambda argv: sys.exit("refused"), capsys) == "error: refused"
    assert ray_session.is_initialized() and ray_session.get(ray_session.put(7)) == 7


def test_an_unexpected_error_keeps_its_traceback(capsys):
    def broken(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(SystemExit) as exited:
        entry(broken)
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.splitlines()[-1].startswith("error: unexpected error (a bug: please report it)")
    assert explain(ZeroDivisionError()) is None



def test_progress_of_work_elsewhere_is_followed_in_plain_lines_and_caught_up_at_the_end(monkeypatch, capsys):
    """``follow`` polls a count that other processes advance (pretraining's logged iterations) while the block runs."""
    import time

    from pipelines.console import Console

    monkeypatch.setenv("BRAINDINO_PROGRESS_SECONDS", "0")
    logged, reads = {"done": None}, []

    def read_done():
        reads.append(logged["done"])
        return logged["done"]

    def until(condition):
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    with Console("job", None, None).follow("stage1 steps", 5, "steps", read_done, every_s=0.01):
        until(lambda: None in reads)  # nothing logged yet: no line
        logged["done"] = 2
        until(lambda: 2 in reads)
        logged["done"] = 5  # the last report lands as the block ends: read once more after it
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("  stage1 steps: 2/5 steps (40%), ") and lines[0].endswith("s left")
    assert lines[1].startswith("  stage1 steps: 5/5 steps (100%), ")
    assert lines[2].startswith("  stage1 steps: 5/5 steps (100%) in ")
