"""Ingest through a misbehaving object store: the fault proxy between the job and the local S3 server.

A run with 10 % of requests answered 503 SlowDown and 2 % of raw-scan downloads cut mid-body lands the
same manifest as a clean run of the same bucket; a store that refuses every write fails each scan alone,
commits nothing, and the next clean run lands each scan exactly once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from braindino.volumes import PreprocessSpec
from datastore.manifest import ManifestStore
from datastore.retry import RetryConfig, StoreUnavailable
from datastore.volumes import open_root, read_volume
from infra.local.faults import Fault
from infra.local.services import LocalMlflow, create_bucket
from ingest.job import STORE_UNAVAILABLE, run_ingest
from ingest.settings import IngestSettings
from ingest.spec import DatasetSpec
from pipelines.ingestion import IngestConfig, ingest
from pipelines.tracking import TrackingConfig

pytestmark = pytest.mark.timeout(420)

SPEC = PreprocessSpec(spacing=(3.0, 3.0, 3.0), slice_size=64)
RETRIES = RetryConfig(backoff_base_s=0.02, backoff_cap_s=0.5)  # the default attempts, quick waits
FEW = RetryConfig(max_attempts=2, backoff_base_s=0.02, backoff_cap_s=0.5)  # a refusal outlasts these quickly
SCANS = {"sub-01/anat/T1w.nii.gz", "sub-02/anat/T1w.nii", "sub-03/dicom/"}


@pytest.fixture(scope="module")
def raw(object_store, ray_session, t1_small, dicom_series, make_nifti):
    """A bucket of real-derived scans (two NIfTIs and a DICOM series of one object per slice) and its spec."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    create_bucket(object_store, bucket)
    data, affine = t1_small
    client = object_store.boto3_client()
    files = {"sub-01/anat/T1w.nii.gz": make_nifti(data, affine, gz=True),
             "sub-02/anat/T1w.nii": make_nifti(data[::-1].copy(), affine),
             **{f"sub-03/dicom/{name}": body for name, body in dicom_series.items()}}
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=f"raw/{key}", Body=body)
    spec = DatasetSpec(name="lab", source=f"s3://{bucket}/raw", licence="test fixture from ICBM152 2009c",
                       subject_pattern=r"^(?P<subject>[^/]+)/")
    return bucket, spec


def settings_for(bucket: str, folder: str, store) -> IngestSettings:
    return IngestSettings(output=f"s3://{bucket}/{folder}", storage=replace(store, retries=RETRIES), preprocess=SPEC,
                          shard_size=40)


def content(output: str, store):
    """What a manifest says was ingested, run ids and paths aside, and every stored volume's voxels."""
    manifest = ManifestStore(output, store).latest()
    scans = sorted((r.source_key, r.status, r.content_digest, r.slices_kept, tuple(r.shape or ()))
                   for r in manifest.current_scans())
    slices = Counter((s["scan_id"], s["z"]) for s in manifest.active_slices().to_pylist())
    root = open_root(output, store, mode="r")
    volumes = {r.source_key: read_volume(root, r.zarr_path).data for r in manifest.current_scans() if r.status == "ok"}
    return manifest, scans, slices, volumes


@pytest.fixture(scope="module")
def clean(raw, object_store):
    bucket, spec = raw
    settings = settings_for(bucket, "clean", object_store)
    report = run_ingest([spec], settings)
    return report, content(settings.output, object_store)


def test_ingest_under_throttling_and_cut_downloads_lands_the_clean_manifest(raw, clean, object_store, flaky_store,
                                                                              tmp_path):
    bucket, spec = raw
    store, proxy = flaky_store
    spec_file = tmp_path / "lab.yaml"
    spec_file.write_text(f"name: lab\nsource: {spec.source}\nlicence: {spec.licence}\n")
    mlflow = LocalMlflow(tmp_path)
    config = IngestConfig(datasets=[str(spec_file)], ingest=settings_for(bucket, "flaky", store),
                          tracking=TrackingConfig(mlflow.tracking_uri, "ingest-flaky", mlflow.artifact_root))
    proxy.inject(Fault("reset", ["get"], rate=0.02, key="/raw/", cut_at=0.4, seed=9),  # raw reads only
                 Fault("slow_down", ["get", "put", "part"], rate=0.1, seed=1))
    report = ingest(config)
    proxy.clear()

    _, (clean_manifest, *clean_content) = clean
    manifest, *flaky_content = content(config.ingest.output, object_store)
    assert flaky_content[0] == clean_content[0]  # same scans, digests, statuses, slice counts, shapes
    assert {k for k, *_ in flaky_content[0]} == SCANS
    assert flaky_content[1] == clean_content[1]  # the same slices, shard by shard aside
    for key, voxels in clean_content[2].items():
        np.testing.assert_array_equal(flaky_content[2][key], voxels)  # no volume read back with missing chunks
    assert report.committed and report.quarantined == [] and report.failed == []

    injected = proxy.counts()
    assert injected["get"]["slow_down"] > 0 and injected["get"]["reset"] > 0 and injected["put"]["slow_down"] > 0
    # every cut download was fetched again (counted), and nothing is counted that no fault caused
    assert injected["get"]["reset"] <= report.store_retries <= proxy.injected()
    assert f"object store: {report.store_retries} requests retried" in report.summary()
    run = MlflowClient(mlflow.tracking_uri).search_runs(
        [MlflowClient(mlflow.tracking_uri).get_experiment_by_name("ingest-flaky").experiment_id])[0]
    assert run.data.metrics["store_retries"] == report.store_retries
    assert run.data.metrics["scans_failed_store"] == 0


def test_a_store_refusing_every_write_fails_the_run_uncommitted_and_the_next_run_lands_each_scan_once(
        raw, clean, object_store, flaky_store):
    bucket, spec = raw
    store, proxy = flaky_store
    settings = replace(settings_for(bucket, "refused", store), storage=replace(store, retries=FEW))
    with proxy.injecting(Fault("slow_down", ["put", "part"], key="/refused/")), pytest.raises(StoreUnavailable) as failed:
        run_ingest([spec], settings)
    assert "committed nothing (the manifest stays at v0)" in str(failed.value)
    assert f"{settings.output}/zarr" in str(failed.value) and "reduce your request rate" in str(failed.value)
    assert ManifestStore(settings.output, object_store).versions() == []

    rerun = run_ingest([spec], settings)
    manifest, *rerun_content = content(settings.output, object_store)
    assert rerun.committed and ManifestStore(settings.output, object_store).versions() == [1]
    assert rerun_content[0] == clean[1][1] and rerun_content[1] == clean[1][2]
    assert Counter(r["source_key"] for r in manifest.scans.to_pylist()) == {k: 1 for k in SCANS}


def test_a_scan_the_store_will_not_serve_fails_alone_and_the_next_run_retries_it(raw, clean, object_store, flaky_store):
    bucket, spec = raw
    store, proxy = flaky_store
    settings = replace(settings_for(bucket, "unserved", store), storage=replace(store, retries=FEW))
    with proxy.injecting(Fault("internal_error", ["get"], key="raw/sub-02/")):
        first = run_ingest([spec], settings)
    assert first.committed and first.quarantined == [] and first.scans_ok == 2
    [failure] = first.failed
    assert failure["source_key"] == "sub-02/anat/T1w.nii" and failure["reason"] == STORE_UNAVAILABLE
    assert f"{spec.source}/sub-02/anat/T1w.nii" in failure["detail"] and "InternalError" in failure["detail"]
    assert "1 scans failed after their retries (store_unavailable)" in first.summary()
    landed = ManifestStore(settings.output, object_store).latest()
    assert {r.source_key for r in landed.current_scans()} == SCANS - {"sub-02/anat/T1w.nii"}

    second = run_ingest([spec], settings)
    assert second.committed and second.scans_processed == 1 and second.failed == []
    _, *second_content = content(settings.output, object_store)
    assert second_content[0] == clean[1][1] and second_content[1] == clean[1][2]


def test_a_shard_the_store_refuses_fails_the_run_before_its_commit_naming_the_shard(raw, object_store, flaky_store):
    bucket, spec = raw
    store, proxy = flaky_store
    settings = replace(settings_for(bucket, "noshards", store), storage=replace(store, retries=FEW))
    with proxy.injecting(Fault("internal_error", ["put", "part"], key="/noshards/shards/")):
        with pytest.raises(StoreUnavailable) as failed:
            run_ingest([spec], settings)
    message = str(failed.value)
    assert "committed nothing (the manifest stays at v0)" in message
    assert f"s3://{bucket}/noshards/shards/" in message and "InternalError" in message.replace("INTERNAL_FAILURE", "InternalError")
    assert ManifestStore(settings.output, object_store).versions() == []
