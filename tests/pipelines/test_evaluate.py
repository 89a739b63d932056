"""The evaluation job on real bundled scans ingested into the local S3 server, a local Ray and MLflow on sqlite:
the suite's table, figures and registered heads; the feature cache and the stored split on a second run; a
changed scan re-extracted."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from infra.local.catalogue import entry
from braindino.config import load_config
from braindino.features import Encoder
from braindino.models.vit import ViTConfig, VisionTransformer
from braindino.volumes import PreprocessSpec
from infra.local.bundled import missing_entries, upload_bundled
from infra.local.services import LocalMlflow, create_bucket
from tests.overrides import store_overrides
from tests.voice import assert_own_voice, run_braindino, set_flags

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "evaluate" / "bundled.yaml"
SPEC = PreprocessSpec(spacing=(4.0, 4.0, 4.0), slice_size=64)
DATASETS = {
    "icbm152": ["icbm2009c_t1", "icbm2009c_t2"],
    "colin27": ["colin27_t1"],
    "pyradiomics": ["pyradiomics_brain1_t1c", "pyradiomics_brain1_tumour", "pyradiomics_brain2_t1c",
                    "pyradiomics_brain2_tumour"],
    "heudiconv": ["heudiconv_dwi"],
    "nibabel": ["nibabel_example4d"],
}
QUICK = {"epochs": 12, "eval_every": 4, "hidden_dim": 32, "width": 32, "learning_rates": [0.005]}


@pytest.fixture(scope="module")
def bundled(object_store, ray_session):
    """The bundled real scans of ``DATASETS`` uploaded to a bucket and ingested at 4 mm, 64 px."""
    from ingest.job import run_ingest
    from ingest.settings import IngestSettings
    from ingest.spec import load_spec

    if missing_entries(DATASETS):
        pytest.skip(f"not installed here: {[e.name for e in missing_entries(DATASETS)]}")
    bucket = "evaluate-data"
    create_bucket(object_store, bucket)
    upload_bundled(object_store, bucket, DATASETS)
    specs = [load_spec(REPO / "configs" / "datasets" / f"{name}.yaml", [f"source=s3://{bucket}/raw/{name}"])
             for name in DATASETS]
    output = f"s3://{bucket}/ingest"
    report = run_ingest(specs, IngestSettings(output=output, storage=object_store, preprocess=SPEC, shard_size=256))
    assert report.scans_ok == 7 and not report.quarantined, report.summary()
    return {"bucket": bucket, "output": output, "specs": specs}


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> Path:
    """A micro encoder export (seeded weights, the ingest's preprocessing): the encoder under evaluation."""
    folder = tmp_path_factory.mktemp("candidate")
    torch.manual_seed(7)
    Encoder(VisionTransformer(ViTConfig(size="micro"))).save(folder / "encoder.safetensors")
    (folder / "preprocess.json").write_text(SPEC.to_json())
    return folder


def quick_task(name: str, folder: Path, **changes) -> str:
    """A bundled task spec with a quick head (few epochs, small hidden layer), written under ``folder``."""
    raw = yaml.safe_load((REPO / "configs" / "tasks" / f"{name}.yaml").read_text())
    raw["head"] = {**raw.get("head", {}), **QUICK}
    raw.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def evaluate_overrides(bundled, candidate, object_store):
    """``evaluate_overrides(tasks, root, *overrides)`` -> (``--set`` values of a quick evaluation with MLflow and
    outputs under ``root``, that MLflow)."""

    def build(tasks: list[str], root: Path, *overrides: str) -> tuple[list[str], LocalMlflow]:
        local = LocalMlflow(root / "mlflow")
        local.root.mkdir(parents=True, exist_ok=True)
        return [f"encoder={candidate}", f"tasks={json.dumps(tasks)}", f"manifest={bundled['output']}",
                *store_overrides("storage", object_store), f"output={root / 'out'}",
                f"features.cache=s3://{bundled['bucket']}/features", "features.slices_per_volume=16",
                "protocol.seeds=1", "protocol.resamples=100", "knn.k=[3]", "threads=1",
                f"tracking.tracking_uri={local.tracking_uri}", f"tracking.artifact_root={local.artifact_root}",
                *overrides], local

    return build


@pytest.fixture(scope="module")
def evaluation(evaluate_overrides):
    """``evaluation(tasks, root, *overrides)`` -> the evaluate job's result, run in this process, and its MLflow."""
    from pipelines.evaluate import run
    from pipelines.evaluation.config import EvaluateConfig

    def evaluate(tasks: list[str], root: Path, *overrides: str):
        values, local = evaluate_overrides(tasks, root, *overrides)
        mlflow.set_tracking_uri(local.tracking_uri)
        return run(load_config(EvaluateConfig, CONFIG, values)), local

    return evaluate


@pytest.fixture(scope="module")
def first_run(evaluation, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tasks = [quick_task("bundled-sequence", root), quick_task("bundled-axial-position", root),
             quick_task("bundled-tumour", root)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result, local = evaluation(tasks, root)
    sys.stdout.write(printed.getvalue())
    return result, local, root, printed.getvalue()


def test_the_suite_reports_each_task_encoder_and_fraction_in_mlflow(first_run):
    result, local, _, printed = first_run
    assert "  tasks: 3/3 tasks (100%) in " in printed  # the progress lines on a plain stdout
    assert re.search(r"^  volumes encoded: (\d+)/\1 volumes \(100%\) in ", printed, re.MULTILINE), printed
    tasks = {"bundled-sequence": "macro_auc", "bundled-axial-position": "mae", "bundled-tumour": "dice"}
    encoders = {row.encoder for row in result.rows}
    assert len(encoders) == 2 and any(e.startswith("random-init (micro)") for e in encoders)
    heads = {(row.task, row.head) for row in result.rows}
    assert {("bundled-sequence", "mlp-attention"), ("bundled-sequence", "knn-k3"), ("bundled-axial-position", "mlp-mean"),
            ("bundled-tumour", "decoder")} <= heads
    assert {(row.task, row.fraction) for row in result.rows if row.task == "bundled-sequence"} == \
        {("bundled-sequence", 0.5), ("bundled-sequence", 1.0)}
    for row in result.rows:
        assert row.metric == tasks[row.task] and (np.isnan(row.low) or row.low <= row.mean + 1e-9 or row.valid_resamples < 100)
    position = [r for r in result.rows if r.task == "bundled-axial-position" and r.fraction == 1.0]
    assert all(0 <= r.mean < 0.5 for r in position)  # MAE on a 0..1 target
    client = MlflowClient(local.tracking_uri)
    run = client.get_run(result.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "braindino-evaluate" and run.data.tags["job"] == "evaluate" and "git.commit" in run.data.tags
    stem = next(r for r in result.rows if r.task == "bundled-tumour").metric_key()
    assert f"{stem}/dice" in run.data.metrics and f"{stem}/hd95" in run.data.metrics
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, tracking_uri=local.tracking_uri))
    table = (artifacts / "results.md").read_text()
    assert "| bundled-tumour |" in table and "bootstrap" in table
    sequence = artifacts / "tasks" / "bundled-sequence"
    assert {"task.yaml", "split.json", "curves.png"} <= {p.name for p in sequence.iterdir()}
    assert len(list(sequence.rglob("projection.png"))) == 2
    tumour = artifacts / "tasks" / "bundled-tumour"
    predictions = list(tumour.rglob("predictions/*.nii.gz"))
    assert len(predictions) == 4 and len(list(tumour.rglob("overlay_*.png"))) == 4  # both folds, both encoders
    image = nib.load(str(next(p for p in predictions)))
    assert image.shape in {(256, 256, 25), (256, 256, 23)}  # the NRRD grids the scans came in on


def test_heads_are_registered_with_their_encoder_task_and_split(first_run, candidate, tmp_path):
    from pipelines.registry import RegistryError, fetch_head, sha256_file

    result, local, _, _ = first_run
    mlflow.set_tracking_uri(tmp_path.as_uri())  # elsewhere: fetching must follow the tracking URI it is given
    client = MlflowClient(local.tracking_uri)
    digest = sha256_file(candidate / "encoder.safetensors")
    assert set(result.heads) == {"bundled-sequence", "bundled-axial-position", "bundled-tumour"}
    version = client.get_model_version_by_alias("braindino-head-bundled-sequence", "candidate")
    tags = version.tags
    assert tags["encoder.weights_sha256"] == digest and tags["task"] == "bundled-sequence"
    assert tags["split.sha256"] == result.outcomes["bundled-sequence"].split.digest
    assert len(tags["task.spec_sha256"]) == 64 and tags["source_run"] == result.run_id
    assert "Research only" in version.description and "trainable parameters" in version.description
    head = fetch_head("models:/braindino-head-bundled-sequence@candidate", local.tracking_uri, encoder_sha256=digest)
    assert head.weights_sha256 == tags["weights_sha256"] and head.spec.output["classes"] == ["T1w", "T2w", "T1c", "DWI", "BOLD"]
    assert not list(head.directory.rglob("*.pkl")) and not list(head.directory.rglob("*.pt"))
    with pytest.raises(RegistryError, match=f"{digest}.*{'0' * 64}"):
        fetch_head("models:/braindino-head-bundled-sequence@candidate", local.tracking_uri, encoder_sha256="0" * 64)
    tumour = fetch_head("models:/braindino-head-bundled-tumour@candidate", local.tracking_uri, encoder_sha256=digest)
    assert tumour.spec.kind == "segmentation" and tumour.spec.features.slices_per_volume == 0
    mlflow.set_tracking_uri(local.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/braindino-head-bundled-sequence@candidate")  # models from code
    slices = np.random.default_rng(0).normal(size=(2, 5, 128)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(head.load().module(torch.from_numpy(slices)), dim=1).numpy()
    np.testing.assert_allclose(model.predict(slices), expected, rtol=1e-5, atol=1e-6)


def test_a_second_run_reads_the_cache_and_the_stored_split(first_run, evaluation, tmp_path_factory):
    _, _, root, _ = first_run
    result, _ = evaluation([str(root / "bundled-axial-position.yaml")], root, "register.enabled=false")
    outcome = result.outcomes["bundled-axial-position"]
    assert outcome.split_reused and outcome.split == first_run[0].outcomes["bundled-axial-position"].split
    assert all(r.encoded_slices == 0 and r.cached == r.scans == 5 for r in outcome.extraction.values())


def test_the_command_speaks_in_its_own_voice(first_run, evaluate_overrides, ray_session, candidate):
    """``braindino evaluate`` in a subprocess with a terminal-less stdout, attached to the session's Ray."""
    import ray

    _, _, root, _ = first_run
    task = root / "bundled-axial-position.yaml"
    values, local = evaluate_overrides([str(task)], root / "command", "register.enabled=false", "baselines=[]")
    done = run_braindino(["evaluate", "--config", str(CONFIG), *set_flags(values)], root / "logs",
                         {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    lines, _ = assert_own_voice(done, "evaluate", root / "logs", f"braindino evaluate: evaluate {candidate} on 1 task")
    client = MlflowClient(local.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("braindino-evaluate").experiment_id])
    assert any(re.fullmatch(rf"  MLflow run +{run.info.run_id} \(experiment 'braindino-evaluate' at .*\)", line)
               for line in lines), lines[-8:]
    assert any(line.startswith("| bundled-axial-position |") for line in lines), done.stdout[-3000:]


def test_a_changed_scan_is_re_extracted(first_run, evaluation, bundled, object_store):
    from ingest.job import run_ingest
    from ingest.settings import IngestSettings

    _, _, root, _ = first_run
    client = object_store.boto3_client()
    key = next(item["Key"] for item in client.list_objects_v2(Bucket=bundled["bucket"], Prefix="raw/colin27/")["Contents"])
    image = nib.load(str(entry("colin27_t1").path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[90:100, 100:110, 80:90] *= 1.5  # a changed scan: new content digest
    client.put_object(Bucket=bundled["bucket"], Key=key, Body=nib.Nifti1Image(data, image.affine).to_bytes())
    report = run_ingest(bundled["specs"], IngestSettings(output=bundled["output"], storage=object_store, preprocess=SPEC,
                                                         shard_size=256))
    assert report.scans_ok == 1
    result, _ = evaluation([str(root / "bundled-axial-position.yaml")], root, "register.enabled=false", "baselines=[]")
    (extraction,) = result.outcomes["bundled-axial-position"].extraction.values()
    assert extraction.encoded_scans == 1 and extraction.cached == 4 and extraction.encoded_slices > 0
