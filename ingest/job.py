"""The ingest job on Ray Data: plan -> process scans -> zarr -> shuffled shards -> manifest commit.

Stages:
1. an output root of an older manifest layout is upgraded (``datastore.upgrade``), then the driver
   plans the run (``ingest.planning``): the new or changed scan units, with their pseudonyms;
2. ``process_units`` (Ray Data, at most ``concurrency`` scans at once) fetches each unit's bytes, runs
   ``process_scan``, writes the canonical volume to zarr and returns the unit's ``ScanRow`` as typed
   columns plus its kept slices (float16 pixels, ``z``, foreground fractions);
3. slices are exploded into rows, shuffled globally with a seed (so a shard mixes subjects and
   datasets), cut into blocks of ``shard_size`` rows and written one tar per block by ``write_shard_block``;
4. the manifest tables are written, then the new version is committed last; then the shard and table
   folders of runs that died before their commit are deleted.

A run that dies anywhere before step 4's commit leaves only unreferenced files; the rerun redoes it.

The object store is retried under ``settings.storage.retries``. A scan whose bytes cannot be read, or
whose volume cannot be written, once the retries are spent fails alone: it is reported (status
``store_unavailable``, naming the object and the last error), left out of the manifest (its half-written
volume is never referenced) and picked up by the next run; the other scans land. A shard, table or
commit that cannot be written fails the run before its commit (``StoreUnavailable``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from dataclasses import replace
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import numpy as np
import pyarrow as pa
import ray
from ray.data import TaskPoolStrategy

from braindino.volumes import Slice
from datastore.manifest import SCANS_SCHEMA, SLICES_SCHEMA, Manifest, ManifestStore, ScanRow, SliceRow
from datastore.retry import RETRIES, StoreUnavailable, describe, store_errors
from datastore.shards import SAMPLE_DTYPE, Sample, SampleRecord, sample_key, sample_stack, shard_path, write_shard
from datastore.upgrade import upgrade_manifest
from datastore.volumes import ZARR_FOLDER, open_root, prepare_root, write_volume
from ingest.ledger import next_labels, next_tables, same_rows, unchanged_content
from ingest.planning import ScanTask, checked_preprocess, label_rows, plan_tasks
from ingest.process import ScanResult, process_scan
from ingest.qc import write_qc
from ingest.report import IngestReport
from ingest.settings import INGEST_VERSION, IngestSettings
from ingest.sources import read_payload, unit_uri
from ingest.spec import DatasetSpec

FaultHook = Callable[[str], None]
# progress(label, total, unit) -> a context manager yielding advance(count); how a driver shows the scans go by
Progress = Callable[[str, int, str], ContextManager[Callable[[int], None]]]
SLICE_COLUMNS = [("images", pa.binary()), ("z", pa.list_(pa.int32())), ("foreground", pa.list_(pa.float64()))]
SAMPLE_COLUMNS = ("volume_id", "scan_id", "dataset", "subject", "session", "sequence", "spacing")
# a slice row, the size of its shard, and why the shard could not be written (null when it was)
WRITTEN_SCHEMA = SLICES_SCHEMA.append(pa.field("bytes", pa.int64())).append(pa.field("error", pa.string()))
UNIT_SCHEMA = SCANS_SCHEMA.append(pa.field("store_retries", pa.int64()))  # a scan row and the retries it took
STORE_UNAVAILABLE = "store_unavailable"  # a unit's status when the store failed it: not in the manifest, retried


def run_ingest(specs: list[DatasetSpec], settings: IngestSettings, fault_hook: FaultHook | None = None,
               progress: Progress | None = None) -> IngestReport:
    """Ingest what is new or changed in ``specs`` into ``settings.output`` (Ray must be initialised).

    ``fault_hook(stage)`` is called at ``"before_commit"``, after every data file is written; tests
    raise there to simulate a job killed before its commit. ``progress`` is told of each processed scan.
    """
    started, retries_before = time.monotonic(), RETRIES.count
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    upgrade_manifest(settings.output, settings.storage, settings.preprocess)
    store = ManifestStore(settings.output, settings.storage)
    previous = store.latest()
    preprocess = checked_preprocess(previous, settings)
    tasks, listed = plan_tasks(specs, settings.storage, previous)
    report = IngestReport(run_id, previous.version, committed=False, scans_seen=sum(listed.values()))
    labels = next_labels(previous, label_rows(specs, settings.storage))
    licences = {s.name: {"licence": s.licence, "citation": s.citation, "source": s.source} for s in specs}
    if not tasks and same_rows(labels, previous.labels) and all(previous.datasets.get(n) == v for n, v in licences.items()):
        return finished(report, started, retries_before)

    try:
        scan_rows, slices, shard_bytes, skip, unit_retries = process_tasks(tasks, previous, specs, settings, run_id, progress)
        failed = [r for r in scan_rows if r.status == STORE_UNAVAILABLE]
        scan_rows = [r for r in scan_rows if r.status != STORE_UNAVAILABLE]
        report.failed = [{"dataset": r.dataset, "source_key": r.source_key, "reason": r.reason, "detail": r.detail}
                         for r in failed]
        report.store_retries = unit_retries
        fresh = [r for r in scan_rows if r.volume_id not in skip]
        report.qc, report.qc_error = qc_montages(fresh, settings, run_id)
        if not scan_rows and same_rows(labels, previous.labels) and all(previous.datasets.get(n) == v
                                                                         for n, v in licences.items()):
            return finished(report, started, retries_before)  # every unit failed: nothing to commit
        scans, all_slices = next_tables(previous, scan_rows, slices)
        tables = store.write_tables(run_id, {"scans": scans, "slices": all_slices, "labels": labels})
        if fault_hook:
            fault_hook("before_commit")
        report.manifest_version = store.commit(previous, run_id, tables, licences, preprocess)
    except store_errors() as err:
        raise StoreUnavailable(f"ingest run {run_id} committed nothing (the manifest stays at v{previous.version}): "
                               f"{describe(err)}. Rerun once the store answers: the ledger redoes what is missing") from err
    report.committed = True
    store.sweep_uncommitted()

    report.scans_ok = sum(r.status == "ok" for r in fresh)
    report.quarantined = [{"dataset": r.dataset, "source_key": r.source_key, "reason": r.reason, "detail": r.detail}
                          for r in fresh if r.status == "quarantined"]
    report.slices = slices.num_rows
    report.shards = sorted(shard_bytes)
    report.bytes_read = sum(r.size for r in scan_rows)
    report.bytes_written = sum(shard_bytes.values())
    return finished(report, started, retries_before)


def finished(report: IngestReport, started: float, retries_before: int) -> IngestReport:
    """``report`` with the run's time and every store retry of the driver and the workers."""
    report.store_retries += RETRIES.count - retries_before
    report.seconds = time.monotonic() - started
    return report


def qc_montages(scans: list[ScanRow], settings: IngestSettings, run_id: str) -> tuple[dict[str, str], str]:
    """The run's QC montages (before the commit, so that a run never fails after it), and why they are
    missing when the store refused them: a QC failure is reported, not fatal."""
    try:
        return write_qc(scans, settings.output, settings.storage, run_id), ""
    except store_errors() as err:
        return {}, f"QC montages not written: {describe(err)}"


def process_tasks(tasks: list[ScanTask], previous: Manifest, specs: list[DatasetSpec], settings: IngestSettings,
                  run_id: str, progress: Progress | None = None) -> tuple[list[ScanRow], pa.Table, dict[str, int], set[str], int]:
    """Process every task on Ray Data and write the new slices' shards.

    Returns the scan rows (``store_unavailable`` ones included), the new ``slices`` rows, each written
    shard's size, the volume ids whose content the ledger already holds (their slices are not written
    again), and the store retries the workers made for the units.
    """
    if not tasks:
        return [], SLICES_SCHEMA.empty_table(), {}, set(), 0
    try:
        prepare_root(settings.output, settings.storage, sorted({task.dataset for task in tasks}))
    except store_errors() as err:
        raise StoreUnavailable(f"{settings.output.rstrip('/')}/{ZARR_FOLDER}: {describe(err)}") from err
    processing = (
        ray.data.from_items([task.as_row() for task in tasks], override_num_blocks=len(tasks))
        .map_batches(process_units, batch_size=1, batch_format="pyarrow",
                     fn_kwargs={"settings": settings, "specs": {s.name: s for s in specs}, "run_id": run_id},
                     compute=TaskPoolStrategy(size=settings.concurrency))
    )
    blocks = []
    with (progress or (lambda *_: nullcontext(lambda count: None)))("scans", len(tasks), "scans") as advance:
        for bundle in processing.iter_internal_ref_bundles():  # materialised block by block, as scans finish
            blocks += bundle.block_refs
            advance(bundle.num_rows() or 0)
    processed = ray.data.from_arrow_refs(blocks)
    units = collect(processed.select_columns(UNIT_SCHEMA.names), UNIT_SCHEMA)
    scan_rows = ScanRow.rows(units)
    skip = unchanged_content(previous, scan_rows)
    has_slices = any(r.slices_kept for r in scan_rows if r.volume_id not in skip)
    written = write_shards(processed, skip, settings, run_id) if has_slices else WRITTEN_SCHEMA.empty_table()
    errors = sorted(set(written.filter(written["error"].is_valid())["error"].to_pylist()))
    if errors:
        raise StoreUnavailable(f"{len(errors)} shards not written, e.g. {errors[0]}")
    shards_of: dict[str, set[str]] = defaultdict(set)
    for volume_id, shard in zip(written["volume_id"].to_pylist(), written["shard"].to_pylist()):
        shards_of[volume_id].add(shard)
    scan_rows = [replace(row, shards=sorted(shards_of.get(row.volume_id, ()))) for row in scan_rows]
    shard_bytes = dict(zip(written["shard"].to_pylist(), written["bytes"].to_pylist()))
    return scan_rows, written.select(SLICES_SCHEMA.names), shard_bytes, skip, sum(units["store_retries"].to_pylist())


def collect(dataset: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    """A dataset's rows as one Arrow table of ``schema``."""
    tables = [table.select(schema.names).cast(schema) for table in ray.get(dataset.to_arrow_refs()) if table.num_rows]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def process_units(batch: pa.Table, settings: IngestSettings, specs: dict[str, DatasetSpec], run_id: str) -> pa.Table:
    """Ray Data map_batches over tasks: each unit's ``ScanRow`` columns plus its kept slices (``images``:
    the float16 pixels of every kept slice; ``z`` and ``foreground`` per slice).

    A plain function, so Ray runs it in pooled worker processes that stay warm across runs.
    """
    rows, kept, retries = [], [], []
    for task in map(ScanTask.from_row, batch.to_pylist()):
        before = RETRIES.count
        row, slices = process_unit(task, settings, specs[task.dataset], run_id)
        rows.append(row)
        kept.append(slices)
        retries.append(RETRIES.count - before)
    columns = [
        [sample_stack([s.image for s in slices]).tobytes() for slices in kept],
        [[s.z for s in slices] for slices in kept],
        [[s.foreground_fraction for s in slices] for slices in kept],
    ]
    table = ScanRow.table(rows).append_column("store_retries", pa.array(retries, pa.int64()))
    for (name, arrow_type), values in zip(SLICE_COLUMNS, columns):
        table = table.append_column(name, pa.array(values, arrow_type))
    return table


def process_unit(task: ScanTask, settings: IngestSettings, spec: DatasetSpec, run_id: str) -> tuple[ScanRow, list[Slice]]:
    """One unit: fetch, process, store the volume; returns its scans row and its kept slices.

    When the store fails the unit (after its retries) the row's status is ``store_unavailable`` and it
    has no slices.
    """
    try:
        if task.problem:
            result = ScanResult(task.key, "", reason="unmatched_subject", detail=task.problem)
        else:
            payload = read_payload(spec.source, task.unit, settings.storage, anonymous_names=spec.redact_keys)
            result = process_scan(payload, settings.preprocess, settings.policy)
        row = scan_row(task, result, run_id)
        if result.ok:
            root = open_root(settings.output, settings.storage, mode="r+")
            row = replace(row, zarr_path=write_volume(root, spec.name, row.volume_id, result.volume, zarr_attrs(row, result)))
        return row, result.slices
    except store_errors() as err:
        where = unit_uri(spec.source, task.unit)
        detail = (f"{task.key}: the object store failed after its retries ({type(err).__name__})" if spec.redact_keys
                  else f"{where}: {describe(err)}")
        failed = ScanResult(task.key, "", reason=STORE_UNAVAILABLE, detail=detail)
        return replace(scan_row(task, failed, run_id), status=STORE_UNAVAILABLE), []


def scan_row(task: ScanTask, result: ScanResult, run_id: str) -> ScanRow:
    """The unit's ``scans`` row; ``zarr_path`` and ``shards`` are filled in once written."""
    volume = result.volume
    return ScanRow(
        scan_id=task.scan_id, volume_id=f"{task.scan_id}-{result.digest[:12]}", dataset=task.dataset,
        source_key=task.key, size=task.unit.size, etag=task.unit.etag, content_digest=result.digest,
        status="ok" if result.ok else "quarantined", reason=result.reason, detail=result.detail,
        subject=task.subject, session=task.session, sequence=task.sequence,
        shape=list(volume.shape) if volume else None, spacing=list(volume.spacing) if volume else None,
        orientation=volume.orientation if volume else None, slices_kept=len(result.slices),
        zarr_path="", shards=[], run_id=run_id, ingest_version=INGEST_VERSION,
    )


def zarr_attrs(row: ScanRow, result: ScanResult) -> dict[str, Any]:
    """Attributes beside the voxels: geometry comes from ``write_volume``; all of it non-identifying."""
    return json.loads(json.dumps({
        "dataset": row.dataset, "volume_id": row.volume_id, "subject": row.subject, "session": row.session,
        "sequence": row.sequence, "ingest_version": row.ingest_version, "source_digest": result.digest,
        "provenance": result.volume.provenance, "acquisition": result.metadata,
    }, default=str))


def explode_slices(row: dict[str, Any], skip: set[str], slice_size: int) -> list[dict[str, Any]]:
    """One row per kept slice of a processed scan (none for ``skip``ped volumes): its pixels and the
    fields of its sample record, as columns."""
    if row["status"] != "ok" or row["volume_id"] in skip:
        return []
    images = np.frombuffer(row["images"], dtype=SAMPLE_DTYPE).reshape(-1, slice_size, slice_size)
    scan = {k: row[k] for k in SAMPLE_COLUMNS}
    return [{**scan, "sample_key": sample_key(row["volume_id"], z), "image": image, "z": z, "foreground_fraction": fraction}
            for image, z, fraction in zip(images, row["z"], row["foreground"])]


def write_shard_block(batch: dict[str, np.ndarray], settings: IngestSettings, run_id: str) -> pa.Table:
    """Ray Data map_batches over blocks of ``shard_size`` shuffled slices: one tar per block.

    Returns the block's ``slices`` rows plus the shard's size in ``bytes`` and, when the store refused it, the
    ``error`` naming the shard (the driver fails the run with it); no pixels.
    """
    fs, root = settings.storage.resolve(settings.output)
    keys = [str(k) for k in batch["sample_key"]]
    shard = shard_path(run_id, keys)
    records = [
        SampleRecord(dataset=str(dataset), subject=str(subject), session=str(session), sequence=str(sequence),
                     volume_id=str(volume_id), z=int(z), foreground_fraction=float(fraction),
                     spacing=[float(v) for v in spacing])
        for dataset, subject, session, sequence, volume_id, z, fraction, spacing in zip(
            batch["dataset"], batch["subject"], batch["session"], batch["sequence"], batch["volume_id"], batch["z"],
            batch["foreground_fraction"], batch["spacing"])
    ]
    size, error = 0, None
    try:
        size = write_shard(fs, f"{root}/{shard}", map(Sample, keys, batch["image"], records))
    except store_errors() as err:  # returned, not raised: Ray Data would drop the message and the object's name
        error = f"{settings.output.rstrip('/')}/{shard}: {describe(err)}"
    rows = SliceRow.table(SliceRow(shard, key, r.volume_id, str(scan_id), r.dataset, r.subject, r.z,
                                   r.foreground_fraction, active=True)
                          for key, r, scan_id in zip(keys, records, batch["scan_id"]))
    rows = rows.append_column("bytes", pa.array([size] * len(keys), pa.int64()))
    return rows.append_column("error", pa.array([error] * len(keys), pa.string()))


def write_shards(processed: ray.data.Dataset, skip: set[str], settings: IngestSettings, run_id: str) -> pa.Table:
    """Shuffle every new slice globally (seeded), write shards of ``shard_size``; returns their rows."""
    written = (
        processed.flat_map(explode_slices, fn_kwargs={"skip": skip, "slice_size": settings.preprocess.slice_size})
        .random_shuffle(seed=settings.shuffle_seed)
        .repartition(target_num_rows_per_block=settings.shard_size, strict=True)
        .map_batches(write_shard_block, fn_kwargs={"settings": settings, "run_id": run_id},
                     batch_size=None, compute=TaskPoolStrategy(size=settings.concurrency))
    )
    return collect(written, WRITTEN_SCHEMA)
