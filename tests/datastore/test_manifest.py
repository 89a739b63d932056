"""The manifest format: typed rows and commits that round-trip, commit-last visibility, one layout upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from braindino.volumes import PreprocessSpec
from datastore.files import write_bytes
from datastore.manifest import (MANIFEST_VERSION, Commit, LabelRow, Manifest, ManifestLayoutError,
                                ManifestStore, ScanRow, SliceRow)
from datastore.objectstore import ObjectStoreConfig
from datastore.upgrade import upgrade_manifest

SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96)


def scan_row(key: str, status: str = "ok") -> ScanRow:
    ok = status == "ok"
    return ScanRow(scan_id=f"id-{key}", volume_id=f"id-{key}-d1", dataset="ds", source_key=key, size=10, etag="e1",
                   content_digest="d1", status=status, reason=None if ok else "not_3d", detail=None if ok else "2D",
                   subject="s", session="", sequence="T1w", shape=[4, 4, 2] if ok else None,
                   spacing=[1.0, 1.0, 1.5] if ok else None, orientation="RAS" if ok else None, slices_kept=2 if ok else 0,
                   zarr_path=f"zarr/ds/id-{key}-d1" if ok else "", shards=["shards/r/a.tar"] if ok else [],
                   run_id="run-1", ingest_version=1)


def slice_row(z: int) -> SliceRow:
    return SliceRow(shard="shards/r/a.tar", sample_key=f"id-a.nii-d1_z{z:03d}", volume_id="id-a.nii-d1",
                    scan_id="id-a.nii", dataset="ds", subject="s", z=z, foreground_fraction=0.5, active=True)


def tables() -> dict[str, pa.Table]:
    return {"scans": ScanRow.table([scan_row("a.nii"), scan_row("bad.nii", "quarantined")]),
            "slices": SliceRow.table([slice_row(0), slice_row(1)]),
            "labels": LabelRow.table([LabelRow("ds", "s", "age", "31")])}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_tables_stay_invisible_until_the_version_file_is_committed(where, tmp_path, object_store, bucket):
    root, storage = (str(tmp_path / "out"), ObjectStoreConfig()) if where == "local" else (f"s3://{bucket}/out", object_store)
    store = ManifestStore(root, storage)
    assert store.latest().version == 0

    written = store.write_tables("run-1", tables())
    assert store.latest().version == 0 and store.versions() == []  # written, not committed: invisible

    spec = json.loads(SPEC.to_json())
    assert store.commit(Manifest.empty(), "run-1", written, {"ds": {"licence": "CC0", "citation": "x"}}, spec) == 1
    latest = store.latest()
    assert (latest.version, latest.run_id, latest.scans.num_rows, latest.slices.num_rows) == (1, "run-1", 2, 2)
    assert latest.datasets == {"ds": {"licence": "CC0", "citation": "x"}} and latest.preprocess == spec
    assert latest.scans.schema.metadata[b"braindino.manifest.schema_version"] == b"2"

    stale = store.write_tables("run-2", tables())
    with pytest.raises(RuntimeError, match="another ingest wrote to this output root"):
        store.commit(Manifest.empty(), "run-2", stale, {}, spec)
    assert store.versions() == [1]


def stored(storage: ObjectStoreConfig, root: str) -> dict[str, int]:
    """Every object (S3 key, with its size) or file (path relative to the root) under ``root``."""
    if root.startswith("s3://"):
        bucket, prefix = root.removeprefix("s3://").split("/", 1)
        listing = storage.boto3_client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
        return {item["Key"].removeprefix(f"{prefix}/"): item["Size"] for item in listing}
    return {str(p.relative_to(root)): p.stat().st_size for p in Path(root).rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sweeping_a_dead_runs_folders_keeps_the_committed_run_and_leaves_no_folder_marker(where, tmp_path, object_store,
                                                                                         bucket):
    root, storage = (str(tmp_path / "out"), ObjectStoreConfig()) if where == "local" else (f"s3://{bucket}/out", object_store)
    store = ManifestStore(root, storage)
    store.commit(Manifest.empty(), "run-1", store.write_tables("run-1", tables()), {}, json.loads(SPEC.to_json()))
    store.write_tables("run-2", tables())  # a run that died before its commit
    for run in ("run-1", "run-2"):
        write_bytes(store.fs, f"{store.root}/shards/{run}/a.tar", b"tar")
        write_bytes(store.fs, f"{store.root}/shards/{run}/nested/b.tar", b"tar")
    before = stored(storage, root)

    store.sweep_uncommitted()
    after = stored(storage, root)
    assert after == {path: size for path, size in before.items() if "run-2" not in path}
    assert {path for path in after if "run-1" in path} == {"shards/run-1/a.tar", "shards/run-1/nested/b.tar",
                                                           *(f"manifest/runs/run-1/{t}.parquet" for t in tables())}
    assert not [path for path in after if path.endswith("/")]  # no zero-byte folder marker on S3
    if where == "local":
        assert not (tmp_path / "out" / "shards" / "run-2").exists()


def test_rows_round_trip_through_parquet_with_their_declared_types(tmp_path):
    store = ManifestStore(str(tmp_path), ObjectStoreConfig())
    store.commit(Manifest.empty(), "run-1", store.write_tables("run-1", tables()), {}, json.loads(SPEC.to_json()))
    latest = store.latest()
    assert ScanRow.rows(latest.scans) == [scan_row("a.nii"), scan_row("bad.nii", "quarantined")]
    assert SliceRow.rows(latest.slices) == [slice_row(0), slice_row(1)]
    assert LabelRow.rows(latest.labels) == [LabelRow("ds", "s", "age", "31")]
    assert latest.current_scans()[1].shape is None and latest.current_scans()[0].shape == [4, 4, 2]
    types = {name: str(latest.scans.schema.field(name).type) for name in ("size", "shape", "spacing", "slices_kept")}
    assert types == {"size": "int64", "shape": "list<item: int32>", "spacing": "list<item: double>", "slices_kept": "int32"}
    assert str(latest.slices.schema.field("foreground_fraction").type) == "float"


def test_a_commit_is_plain_json_that_round_trips():
    commit = Commit(3, "run-3", {"scans": "manifest/runs/run-3/scans.parquet"}, {"ds": {"licence": "CC0", "citation": ""}},
                    json.loads(SPEC.to_json()), "2026-01-01T00:00:00Z")
    assert json.loads(commit.to_json()) == {
        "version": 3, "run_id": "run-3", "tables": {"scans": "manifest/runs/run-3/scans.parquet"},
        "datasets": {"ds": {"licence": "CC0", "citation": ""}}, "preprocess": json.loads(SPEC.to_json()),
        "committed_at": "2026-01-01T00:00:00Z", "schema_version": MANIFEST_VERSION}
    assert Commit.from_json(commit.to_json(), "v3") == commit


def test_a_manifest_from_another_schema_version_is_refused_by_name(tmp_path):
    store = ManifestStore(str(tmp_path), ObjectStoreConfig())
    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "v000001.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match=r"v000001.json has manifest schema 99"):
        store.latest()


def test_a_layout_1_root_is_refused_until_its_one_upgrade_step_records_the_spec(tmp_path):
    """A layout-1 commit (here one that recorded a version-1 spec with its retired keys) is upgraded by one
    new commit naming the same tables; the upgrade runs once."""
    store = ManifestStore(str(tmp_path), ObjectStoreConfig())
    written = store.write_tables("run-1", tables())
    legacy_spec = {**json.loads(SPEC.to_json()), "version": 1, "channels": 1, "slices_per_volume": 128}
    legacy = {"version": 1, "schema_version": 1, "run_id": "run-1", "tables": written,
              "datasets": {"ds": {"licence": "CC0", "citation": ""}}, "preprocess": legacy_spec, "committed_at": "t"}
    (tmp_path / "manifest" / "v000001.json").write_text(json.dumps(legacy))
    with pytest.raises(ManifestLayoutError, match="schema 1; .*--upgrade-manifest"):
        store.latest()

    assert upgrade_manifest(str(tmp_path), ObjectStoreConfig(), PreprocessSpec()) == 2
    latest = store.latest()
    assert latest.version == 2 and latest.run_id == "run-1" and latest.datasets == legacy["datasets"]
    assert latest.preprocess == json.loads(SPEC.to_json()) and "channels" not in latest.preprocess
    assert ScanRow.rows(latest.scans) == ScanRow.rows(tables()["scans"])
    assert upgrade_manifest(str(tmp_path), ObjectStoreConfig(), PreprocessSpec()) is None
    assert store.versions() == [1, 2] and store.committed_runs() == {"run-1"}
