"""The ledger rules: what a run processes and how its rows merge into the manifest's next version.

A unit whose key is new, or whose ETag or size differs from its current row, is processed (``plan``).
If its content digest is unchanged, the current row only takes the new ETag and size; otherwise the
old row becomes ``superseded`` (its slices ``active = false``) and the new row is appended
(``next_tables``). Unchanged units are not read at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from datastore.manifest import CURRENT, SLICES_SCHEMA, LabelRow, Manifest, ScanRow
from ingest.sources import ScanUnit


def plan(units: Iterable[ScanUnit], manifest: Manifest) -> list[ScanUnit]:
    """The units to process: keys not in the ledger, or whose ETag or size changed."""
    current = {(row.dataset, row.source_key): row for row in manifest.current_scans()}
    todo = []
    for unit in units:
        row = current.get((unit.dataset, unit.key))
        if row is None or row.etag != unit.etag or row.size != unit.size:
            todo.append(unit)
    return todo


def unchanged_content(manifest: Manifest, scan_rows: Iterable[ScanRow]) -> set[str]:
    """volume_ids of processed rows whose content equals their key's current row (re-uploads, touched files)."""
    current = {(r.dataset, r.source_key): r.content_digest for r in manifest.current_scans()}
    return {r.volume_id for r in scan_rows if current.get((r.dataset, r.source_key)) == r.content_digest}


def next_tables(manifest: Manifest, scan_rows: list[ScanRow], slices: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The next version's ``scans`` and ``slices``: the previous ones with this run's rows merged in.

    ``slices`` holds this run's new slices; those of volumes whose content the ledger already holds are
    left out.
    """
    new = {(r.dataset, r.source_key): r for r in scan_rows}
    superseded: list[str] = []
    kept: list[ScanRow] = []
    for row in ScanRow.rows(manifest.scans):
        fresh = new.get((row.dataset, row.source_key))
        if fresh is not None and row.status in CURRENT:
            if fresh.content_digest == row.content_digest:
                row = replace(row, etag=fresh.etag, size=fresh.size)
                del new[(row.dataset, row.source_key)]
            else:
                row = replace(row, status="superseded")
                superseded.append(row.volume_id)
        kept.append(row)
    scans = ScanRow.table(kept + list(new.values()))
    old = manifest.slices
    if superseded:
        still_active = pc.and_(old["active"], pc.invert(pc.is_in(old["volume_id"], pa.array(superseded))))
        old = old.set_column(old.schema.get_field_index("active"), "active", still_active)
    fresh_ids = pa.array([r.volume_id for r in new.values()], pa.string())
    fresh_slices = slices.select(SLICES_SCHEMA.names).cast(SLICES_SCHEMA)
    return scans, pa.concat_tables([old, fresh_slices.filter(pc.is_in(fresh_slices["volume_id"], fresh_ids))])


def next_labels(manifest: Manifest, labels: dict[str, list[LabelRow]]) -> pa.Table:
    """The previous labels with those of every dataset in ``labels`` (dataset -> rows) replaced."""
    old = manifest.labels
    if labels:
        old = old.filter(pc.invert(pc.is_in(old["dataset"], pa.array(list(labels)))))
    return pa.concat_tables([old, LabelRow.table(row for rows in labels.values() for row in rows)])


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Whether two tables of one schema hold the same rows, in any order."""
    def rows(table: pa.Table) -> list[tuple]:
        return sorted(tuple(str(v) for v in row.values()) for row in table.to_pylist())

    return rows(a) == rows(b)
