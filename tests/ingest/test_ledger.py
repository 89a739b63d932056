"""The ledger rules: what is new or changed, what supersedes what, and how labels are replaced."""

from __future__ import annotations

from datastore.manifest import LABELS_SCHEMA, LabelRow, Manifest, ScanRow, SliceRow
from ingest.ledger import next_labels, next_tables, plan, unchanged_content
from ingest.sources import ScanUnit, SourceObject


def unit(key: str, etag: str, size: int = 10) -> ScanUnit:
    return ScanUnit("ds", key, (SourceObject(key, size, etag),))


def scan_row(key: str, etag: str, digest: str, status: str = "ok", size: int = 10, slices: int = 2) -> ScanRow:
    volume_id = f"id-{key}-{digest}"
    return ScanRow(scan_id=f"id-{key}", volume_id=volume_id, dataset="ds", source_key=key, size=size, etag=etag,
                   content_digest=digest, status=status, reason=None if status == "ok" else "not_3d", detail=None,
                   subject="s", session="", sequence="T1w", shape=[4, 4, slices], spacing=[1.0, 1.0, 1.0],
                   orientation="RAS", slices_kept=slices if status == "ok" else 0, zarr_path=f"zarr/ds/{volume_id}",
                   shards=["shards/r/a.tar"], run_id="r", ingest_version=1)


def slice_rows(row: ScanRow) -> list[SliceRow]:
    return [SliceRow(shard="shards/r/a.tar", sample_key=f"{row.volume_id}_z{z:03d}", volume_id=row.volume_id,
                     scan_id=row.scan_id, dataset="ds", subject="s", z=z, foreground_fraction=0.5, active=True)
            for z in range(row.slices_kept)]


def manifest_of(rows: list[ScanRow]) -> Manifest:
    return Manifest(1, "r", ScanRow.table(rows), SliceRow.table(s for r in rows for s in slice_rows(r)),
                    LABELS_SCHEMA.empty_table(), {})


def test_only_new_or_changed_units_are_planned():
    manifest = manifest_of([scan_row("a.nii", "e1", "d1"), scan_row("bad.nii", "e9", "d9", status="quarantined")])
    units = [unit("a.nii", "e1"), unit("bad.nii", "e9"), unit("b.nii", "e2"), unit("a.nii", "e1", size=11)]
    assert [(u.key, u.size) for u in plan(units, manifest)] == [("b.nii", 10), ("a.nii", 11)]
    assert plan([unit("a.nii", "e1-reuploaded")], manifest) == [unit("a.nii", "e1-reuploaded")]


def test_a_changed_object_supersedes_its_old_row_and_slices():
    old = scan_row("a.nii", "e1", "d1")
    manifest = manifest_of([old, scan_row("c.nii", "e3", "d3")])
    new = scan_row("a.nii", "e2", "d2", slices=3)
    scans, slices = next_tables(manifest, [new], SliceRow.table(slice_rows(new)))

    rows = {(r["source_key"], r["content_digest"]): r for r in scans.to_pylist()}
    assert rows[("a.nii", "d1")]["status"] == "superseded"
    assert rows[("a.nii", "d2")]["status"] == "ok" and rows[("c.nii", "d3")]["status"] == "ok"
    active = slices.filter(slices["active"]).to_pylist()
    assert sorted(s["volume_id"] for s in active) == [new.volume_id] * 3 + ["id-c.nii-d3"] * 2
    assert slices.num_rows == 2 + 2 + 3  # history is kept, inactive
    after = Manifest(2, "r2", scans, slices, manifest.labels, {})
    assert after.inactive_sample_keys() == {s.sample_key for s in slice_rows(old)}


def test_the_same_content_under_a_new_etag_only_updates_the_ledger():
    manifest = manifest_of([scan_row("a.nii", "e1", "d1")])
    again = scan_row("a.nii", "e1-multipart", "d1")
    assert unchanged_content(manifest, [again]) == {again.volume_id}
    scans, slices = next_tables(manifest, [again], SliceRow.table(slice_rows(again)))
    assert scans.select(["etag", "status"]).to_pylist() == [{"etag": "e1-multipart", "status": "ok"}]
    assert slices.num_rows == 2


def test_a_quarantined_key_that_is_fixed_supersedes_its_quarantine_row():
    manifest = manifest_of([scan_row("a.nii", "e1", "d1", status="quarantined")])
    fixed = scan_row("a.nii", "e2", "d2")
    scans, _ = next_tables(manifest, [fixed], SliceRow.table(slice_rows(fixed)))
    assert [r["status"] for r in scans.to_pylist()] == ["superseded", "ok"]
    assert Manifest(2, "r2", scans, manifest.slices, manifest.labels, {}).current_scans()[0].content_digest == "d2"


def test_a_dataset_s_labels_are_replaced_as_a_whole_and_others_are_kept():
    manifest = manifest_of([])
    first = next_labels(manifest, {"a": [LabelRow("a", "p1", "age", "31")], "b": [LabelRow("b", "p2", "dx", "AD")]})
    manifest = Manifest(2, "r", manifest.scans, manifest.slices, first, {})
    second = next_labels(manifest, {"a": [LabelRow("a", "p1", "age", "32")]})
    assert sorted((r["dataset"], r["value"]) for r in second.to_pylist()) == [("a", "32"), ("b", "AD")]
