"""Scheduled ingest end to end: the CronJob's entrypoint (``pipelines/ingestion.py --all``) run twice on the
local S3 server with a new scan uploaded in between, logging to the team MLflow server; and the lease in
the output root that refuses a run while another holds it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ingest.lease import LEASE_NAME, Lease, LeaseHeld, LeaseLost, hold_lease

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
SCANS = {"nibabel_anatomical": "raw/night/sub-01/anat.nii", "icbm2009a_t1": "raw/night/sub-02/t1.nii.gz"}


@pytest.fixture(params=["s3", "folder"])
def root(request, object_store, bucket, tmp_path) -> str:
    return f"s3://{bucket}/out" if request.param == "s3" else str(tmp_path / "out")


def _record(root, object_store) -> dict | None:
    lease = Lease(root, object_store, "reader")
    current = lease.store.read()
    return json.loads(current[0]) if current else None


def test_a_second_run_is_refused_while_the_first_holds_the_lease_and_admitted_after(root, object_store):
    first = Lease(root, object_store, "nightly run A")
    first.acquire()
    assert _record(root, object_store)["owner"].startswith("nightly run A on ")
    with pytest.raises(LeaseHeld, match=f"{LEASE_NAME} is held by nightly run A"):
        Lease(root, object_store, "manual run B").acquire()
    first.release()
    assert _record(root, object_store) is None
    second = Lease(root, object_store, "manual run B")
    second.acquire()
    assert second.took_over is None and _record(root, object_store)["owner"].startswith("manual run B")


def test_an_expired_lease_is_taken_over_once_and_its_old_holder_finds_it_lost(root, object_store):
    stale = Lease(root, object_store, "crashed run", ttl_s=0.5)
    stale.acquire()
    time.sleep(1.0)
    heir = Lease(root, object_store, "next run")
    heir.acquire()
    assert heir.took_over is not None and heir.took_over.owner.startswith("crashed run")
    with pytest.raises(LeaseLost, match="taken over by next run"):
        stale.check()  # the crashed run wakes up: it must not commit
    stale.release()  # and must not delete the heir's lease
    assert _record(root, object_store)["owner"].startswith("next run")
    with pytest.raises(LeaseHeld):
        Lease(root, object_store, "third run").acquire()


def test_the_s3_lease_rests_on_conditional_writes_the_server_enforces(object_store, bucket):
    """``If-None-Match: *`` refuses to overwrite, ``If-Match`` refuses a stale ETag: checked on the raw API."""
    from botocore.exceptions import ClientError

    client = object_store.boto3_client()
    first = client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    second = client.put_object(Bucket=bucket, Key="k", Body=b"3", IfMatch=first)["ETag"]
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="k", Body=b"4", IfMatch=first)
    assert client.get_object(Bucket=bucket, Key="k", IfMatch=second)["Body"].read() == b"3"


def test_a_renewed_lease_is_not_taken_over(root, object_store):
    with hold_lease(root, object_store, "long run", ttl_s=4.0) as lease:
        time.sleep(6.0)  # longer than the TTL: only the renewals keep it
        with pytest.raises(LeaseHeld, match="long run"):
            Lease(root, object_store, "intruder").acquire()
        lease.check()
    assert _record(root, object_store) is None


@pytest.fixture(scope="module")
def nightly(ray_session, object_store, team_mlflow, tmp_path_factory):
    """The CronJob's command run twice (``--all``), a new scan uploaded between the runs."""
    from infra.local.catalogue import entry
    from infra.local.services import create_bucket
    from pipelines.ingestion import main

    for name in SCANS:
        if not entry(name).available:
            pytest.skip(f"{name} not available: {entry(name).install_hint}")
    bucket = "nightly-ingest"
    create_bucket(object_store, bucket)
    specs = tmp_path_factory.mktemp("specs")
    (specs / "night.yaml").write_text(f"name: night\nsource: s3://{bucket}/raw/night\nlicence: test scans\n")
    output = f"s3://{bucket}/ingest"
    argv = ["--config", str(REPO / "configs" / "ingest.yaml"), "--all", "--set", f"datasets_dir={specs}",
            "--set", f"ingest.output={output}", "--set", f"ingest.storage.endpoint_url={object_store.endpoint_url}",
            "--set", "ingest.preprocess.spacing=[2.0, 2.0, 2.0]", "--set", "ingest.preprocess.slice_size=64",
            "--set", f"tracking.tracking_uri={team_mlflow.url}", "--set", "tracking.experiment=nightly-ingest"]
    client = object_store.boto3_client()
    (first, key_1), (second, key_2) = SCANS.items()
    client.upload_file(str(entry(first).path), bucket, key_1)
    main(argv)
    client.upload_file(str(entry(second).path), bucket, key_2)
    main(argv)
    return {"argv": argv, "output": output, "bucket": bucket, "keys": (key_1, key_2)}


def _ingest_runs(team_mlflow):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(team_mlflow.url)
    experiment = client.get_experiment_by_name("nightly-ingest")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_the_second_night_ingests_only_the_new_scan(nightly, object_store):
    from datastore.manifest import ManifestStore

    manifest = ManifestStore(nightly["output"], object_store).latest()
    assert manifest.version == 2
    scans = {row.source_key: row for row in manifest.current_scans()}
    first, second = (key.removeprefix("raw/night/") for key in nightly["keys"])
    assert set(scans) == {first, second} and all(row.status == "ok" for row in scans.values())
    assert scans[first].run_id != scans[second].run_id  # the first scan was not processed again
    client = object_store.boto3_client()
    assert "Contents" not in client.list_objects_v2(Bucket=nightly["bucket"], Prefix=f"ingest/{LEASE_NAME}")


def test_each_night_is_an_mlflow_run_saying_what_it_did(nightly, team_mlflow):
    client, runs = _ingest_runs(team_mlflow)
    assert len(runs) == 2
    assert [run.data.metrics["scans_ok"] for run in runs] == [1.0, 1.0]
    assert [run.data.tags["ingest.committed"] for run in runs] == ["True", "True"]
    summary = client.download_artifacts(runs[1].info.run_id, "summary.txt")
    assert "2 scans listed, 1 new or changed" in Path(summary).read_text()
    assert runs[1].info.artifact_uri.startswith("mlflow-artifacts:/")  # through the server, into its bucket


def test_a_run_while_another_holds_the_lease_refuses_and_writes_nothing(nightly, object_store, team_mlflow):
    from datastore.manifest import ManifestStore
    from pipelines.ingestion import main

    with hold_lease(nightly["output"], object_store, "ingest started by hand"):
        with pytest.raises(LeaseHeld, match="is held by ingest started by hand"):  # 'ingest refused: ...', exit 2
            main(nightly["argv"])
    assert ManifestStore(nightly["output"], object_store).latest().version == 2
    assert len(_ingest_runs(team_mlflow)[1]) == 2
