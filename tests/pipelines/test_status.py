"""``braindino status`` against a real ingest (two datasets of real scans, two broken files) in the local S3,
its MLflow ingest run and a registered tiny encoder: the counts match the manifest read independently (the
commit file and its Parquet table), and the HTML page beside the QC montages holds the same numbers."""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections import Counter
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from braindino.volumes import PreprocessSpec
from infra.local.services import create_bucket
from tests.conftest import real_scan
from tests.overrides import store_overrides
from tests.voice import assert_own_voice, run_braindino, set_flags

pytestmark = pytest.mark.timeout(600)
BUCKET = "status-data"
SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=64)


@pytest.fixture(scope="module")
def ingested_root(object_store, ray_session):
    """Dataset ``alpha``: a real T1 and a file that is not NIfTI; ``beta``: the same T1 flipped left-right
    (other content) and a truncated gzip. Ingested once by the ingest job; returns (output, specs, report)."""
    from ingest.job import run_ingest
    from ingest.settings import IngestSettings
    from ingest.spec import DatasetSpec, SequenceRule

    image = nib.load(str(real_scan("nibabel_anatomical").path))
    flipped = nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine)
    create_bucket(object_store, BUCKET)
    client = object_store.boto3_client()
    objects = {"raw/alpha/sub-01/t1.nii": image.to_bytes(), "raw/alpha/sub-02/t1.nii": b"not a scan " * 40,
               "raw/beta/sub-01/t1.nii.gz": gzip.compress(flipped.to_bytes()),
               "raw/beta/sub-02/t1.nii.gz": gzip.compress(image.to_bytes())[:300]}
    for key, data in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    specs = [DatasetSpec(name=name, source=f"s3://{BUCKET}/raw/{name}", licence="nibabel test data",
                         sequence_rules=[SequenceRule("t1", "T1w")]) for name in ("alpha", "beta")]
    settings = IngestSettings(output=f"s3://{BUCKET}/ingest", storage=object_store, preprocess=SPEC, shard_size=64)
    report = run_ingest(specs, settings)
    assert report.committed and len(report.quarantined) == 2, report.summary()
    return settings, specs, report


def manifest_rows(object_store) -> tuple[int, list[dict], list[dict]]:
    """The latest commit's version, scans and slices rows, read with boto3 and pyarrow alone."""
    client = object_store.boto3_client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="ingest/manifest/v")["Contents"]]
    latest = max(keys)
    commit = json.loads(client.get_object(Bucket=BUCKET, Key=latest)["Body"].read())
    tables = {name: pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=f"ingest/{path}")["Body"].read()))
              for name, path in commit["tables"].items()}
    return int(latest[-11:-5]), tables["scans"].to_pylist(), tables["slices"].to_pylist()


class Tables(HTMLParser):
    """Every HTML table as rows of cell texts, and every data-URI image."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell)
            self.cell = None


def test_status_summarises_the_manifest_runs_and_models_as_text_and_html(ingested_root, object_store, mlflow_local,
                                                                          tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.ingestion import IngestConfig, log_run
    from pipelines.tracking import TrackingConfig
    from tests.registered import register_tiny_encoder

    settings, specs, report = ingested_root
    tracking = TrackingConfig(tracking_uri=mlflow_local.tracking_uri, experiment="braindino-ingest",
                              artifact_root=mlflow_local.artifact_root)
    version = register_tiny_encoder(mlflow_local, tmp_path, SPEC)
    log_run(IngestConfig(ingest=settings, tracking=tracking), specs, report)

    overrides = [f"output={settings.output}", f"tracking.tracking_uri={mlflow_local.tracking_uri}",
                 *store_overrides("storage", object_store)]
    done = run_braindino(["status", *set_flags(overrides)], tmp_path / "logs", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_own_voice(done, "status", tmp_path / "logs",
                     f"braindino status: {settings.output} (MLflow {mlflow_local.tracking_uri})", chatter=())
    text = done.stdout

    manifest_version, scans, slices = manifest_rows(object_store)
    current = [s for s in scans if s["status"] in ("ok", "quarantined")]
    expected = {}
    for dataset in sorted({s["dataset"] for s in current}):
        ok = [s for s in current if s["dataset"] == dataset and s["status"] == "ok"]
        expected[dataset] = [str(len(ok)), str(sum(s["dataset"] == dataset for s in current) - len(ok)),
                             str(len({s["subject"] for s in ok})),
                             str(sum(s["dataset"] == dataset and s["active"] for s in slices))]
    assert set(expected) == {"alpha", "beta"} and all(counts[:2] == ["1", "1"] for counts in expected.values())
    reasons = Counter(s["reason"] for s in current if s["status"] == "quarantined")
    assert reasons == {"bad_magic": 1, "truncated_gzip": 1}

    lines = text.splitlines()
    assert f"manifest v{manifest_version:06d}" in text
    for dataset, counts in expected.items():
        assert any(line.split() == [dataset, *counts] for line in lines), text
    assert "quarantined scans by reason: bad_magic 1, truncated_gzip 1" in lines

    client = MlflowClient(mlflow_local.tracking_uri)
    for experiment in ("braindino-ingest", "braindino-pretrain"):
        (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        job = experiment.removeprefix("braindino-")
        assert any(line.split()[:2] == [job, run.info.status] and run.info.run_id in line for line in lines), text
    aliases = client.get_registered_model("braindino-encoder").aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"candidate": version}
    assert any(line.split()[:3] == ["braindino-encoder", "1", version] and f"@candidate -> v{version}" in line
               for line in lines), text

    page = object_store.boto3_client().get_object(Bucket=BUCKET, Key="ingest/qc/status.html")["Body"].read().decode()
    assert f"page: {settings.output}/qc/status.html" in lines
    parsed = Tables()
    parsed.feed(page)
    datasets, quarantine, runs, models = parsed.tables
    assert {row[0]: row[1:] for row in datasets[1:] if row[0] != "total"} == expected
    assert {row[0]: int(row[1]) for row in quarantine[1:]} == reasons
    assert sorted(row[0] for row in runs[1:]) == ["ingest", "pretrain"]
    assert models[1][:3] == ["braindino-encoder", "1", version]
    assert f"Manifest v{manifest_version:06d}" in page
    montages = [src for src in parsed.images if src.startswith("data:image/png;base64,")]
    assert len(montages) == 2  # one per dataset with an ok scan, inlined
    for src in montages:
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).format == "PNG"
