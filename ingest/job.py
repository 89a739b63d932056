"""The ingest job on Ray Data: list -> ledger -> process scans -> zarr -> shuffled shards -> manifest commit.

Stages:
1. the driver lists every dataset's source, groups scan units and keeps those the ledger says are new
   or changed (``manifest.plan``); subject, session and scan pseudonyms are derived here;
2. ``process_unit`` (Ray Data ``map``, at most ``concurrency`` at once) fetches each unit's bytes, runs
   ``process_scan``, writes the canonical volume to zarr and returns its manifest row plus its slices;
3. slices are exploded into rows, shuffled globally with a seed (so a shard mixes subjects and
   datasets), cut into blocks of ``shard_size`` rows and written one tar per block by ``write_shard_block``;
4. the manifest tables are written, then the new version is committed last; then the shard and table
   folders of runs that died before their commit are deleted.

A run that dies anywhere before step 4's commit leaves only unreferenced files; the rerun redoes it.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import TaskPoolStrategy

from braindino.volumes import PreprocessSpec
from ingest.deid import pseudonym
from ingest.manifest import Manifest, ManifestStore, next_labels, next_tables, plan, unchanged_content
from ingest.process import ScanResult, process_scan
from ingest.qc import montage
from ingest.readers.scan import ScanPolicy
from ingest.sources import ScanUnit, SourceObject, list_objects, read_payload, scan_units, unit_uri
from ingest.spec import DatasetSpec
from ingest.storage import ObjectStoreConfig
from ingest.writers.files import write_bytes
from ingest.writers.shards import SAMPLE_FORMAT_VERSION, sample_key, sample_stack, shard_name, write_shard
from ingest.writers.zarr_store import open_root, prepare_root, read_axial_slice, volume_attrs, write_volume

INGEST_VERSION = 1
QC_TILES_PER_DATASET = 24


@dataclass(frozen=True)
class IngestSettings:
    """Where outputs go and how scans become slices."""

    output: str = ".local/ingest"  # s3://bucket/prefix or a local folder: zarr/, shards/, manifest/, qc/
    storage: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    policy: ScanPolicy = field(default_factory=ScanPolicy)
    shard_size: int = 1000  # samples per shard
    shuffle_seed: int = 0
    concurrency: int = 2  # scans processed at once

    def __post_init__(self) -> None:
        if self.shard_size <= 0 or self.concurrency <= 0:
            raise ValueError("shard_size and concurrency must be positive")


@dataclass
class IngestReport:
    """What one run did; ``committed`` is False when there was nothing new (nothing was written)."""

    run_id: str
    manifest_version: int
    committed: bool
    scans_seen: int
    scans_ok: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)  # dataset, source_key, reason, detail
    slices: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)
    qc: dict[str, str] = field(default_factory=dict)  # dataset -> montage PNG path

    @property
    def scans_processed(self) -> int:
        return self.scans_ok + len(self.quarantined)

    @property
    def scans_per_second(self) -> float:
        return self.scans_processed / self.seconds if self.seconds else 0.0

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(q["reason"] for q in self.quarantined).items()))

    def metrics(self) -> dict[str, float]:
        return {"scans_ok": self.scans_ok, "scans_quarantined": len(self.quarantined), "slices": self.slices,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written, "scans_per_s": self.scans_per_second,
                "seconds": self.seconds}

    def summary(self) -> str:
        lines = [f"ingest run {self.run_id}: {self.scans_seen} scans listed, {self.scans_processed} new or changed"]
        if not self.committed:
            lines.append(f"  nothing new: manifest stays at v{self.manifest_version}, nothing written")
            return "\n".join(lines)
        reasons = ", ".join(f"{r}: {n}" for r, n in self.by_reason().items()) or "none"
        lines += [
            f"  scans ok {self.scans_ok}; quarantined {len(self.quarantined)} ({reasons})",
            f"  slices {self.slices} in {len(self.shards)} shards; read {self.bytes_read / 2**20:.1f} MiB, "
            f"wrote {self.bytes_written / 2**20:.1f} MiB",
            f"  {self.seconds:.1f} s, {self.scans_per_second:.2f} scans/s; manifest v{self.manifest_version}",
        ]
        return "\n".join(lines)


FaultHook = Callable[[str], None]


def run_ingest(specs: list[DatasetSpec], settings: IngestSettings, fault_hook: FaultHook | None = None) -> IngestReport:
    """Ingest what is new or changed in ``specs`` into ``settings.output`` (Ray must be initialised).

    ``fault_hook(stage)`` is called at ``"before_commit"``, after every data file is written; tests
    raise there to simulate a job killed before its commit.
    """
    started = time.monotonic()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    store = ManifestStore(settings.output, settings.storage)
    previous = store.latest()
    preprocess = checked_preprocess(previous, settings)
    tasks, listed = plan_tasks(specs, settings.storage, previous)
    report = IngestReport(run_id, previous.version, committed=False, scans_seen=sum(listed.values()))
    labels = next_labels(previous, label_rows(specs, settings.storage))
    licences = {s.name: {"licence": s.licence, "citation": s.citation, "source": s.source} for s in specs}
    recorded = previous.version == 0 or previous.preprocess is not None  # else commit to record the spec
    if not tasks and recorded and same_rows(labels, previous.labels) and all(
            previous.datasets.get(n) == v for n, v in licences.items()):
        report.seconds = time.monotonic() - started
        return report

    scan_rows, slice_rows, skip = process_tasks(tasks, previous, specs, settings, run_id) if tasks else ([], [], set())
    scans, slices = next_tables(previous, scan_rows, [{k: r[k] for k in r if k != "bytes"} for r in slice_rows])
    tables = store.write_tables(run_id, {"scans": scans, "slices": slices, "labels": labels})
    if fault_hook:
        fault_hook("before_commit")
    report.manifest_version = store.commit(previous, run_id, tables, licences, preprocess)
    report.committed = True
    sweep_uncommitted(store, settings)

    fresh = [r for r in scan_rows if r["volume_id"] not in skip]
    report.scans_ok = sum(r["status"] == "ok" for r in fresh)
    report.quarantined = [{k: r[k] for k in ("dataset", "source_key", "reason", "detail")} for r in fresh if r["status"] == "quarantined"]
    report.slices = len(slice_rows)
    report.shards = sorted({r["shard"] for r in slice_rows})
    report.bytes_read = sum(r["size"] for r in scan_rows)
    report.bytes_written = sum({r["shard"]: r["bytes"] for r in slice_rows}.values())
    report.qc = write_qc(fresh, settings, run_id)
    report.seconds = time.monotonic() - started
    return report


def process_tasks(tasks: list[dict[str, Any]], previous: Manifest, specs: list[DatasetSpec], settings: IngestSettings,
                  run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """Process every task on Ray Data and write the new slices' shards.

    Returns the scan rows, the slice rows and the volume ids whose content the ledger already holds.
    """
    prepare_root(settings.output, settings.storage, sorted({task["dataset"] for task in tasks}))
    processed = (
        ray.data.from_items(tasks, override_num_blocks=len(tasks))
        .map(process_unit, fn_kwargs={"settings": settings, "specs": {s.name: s for s in specs}},
             compute=TaskPoolStrategy(size=settings.concurrency))
        .materialize()
    )
    scan_rows = [json.loads(row["scan"]) for row in processed.select_columns(["scan"]).iter_rows()]
    skip = unchanged_content(previous, scan_rows)
    slice_rows = write_shards(processed, skip, settings, run_id) if sum(r["slices_kept"] for r in scan_rows) else []
    shards_of: dict[str, set[str]] = defaultdict(set)
    for row in slice_rows:
        shards_of[row["volume_id"]].add(row["shard"])
    for row in scan_rows:
        row["shards"] = sorted(shards_of.get(row["volume_id"], ()))
        row["run_id"] = run_id
    return scan_rows, slice_rows, skip


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Whether two tables of one schema hold the same rows, in any order."""
    def rows(table: pa.Table) -> list[tuple]:
        return sorted(tuple(str(v) for v in row.values()) for row in table.to_pylist())

    return rows(a) == rows(b)


def sweep_uncommitted(store: ManifestStore, settings: IngestSettings) -> None:
    """Delete the shard and table folders of runs that died before their commit (one writer per root)."""
    fs, root = settings.storage.resolve(settings.output)
    committed = store.committed_runs()
    for parent in ("shards", "manifest/runs"):
        listing = fs.get_file_info(pafs.FileSelector(f"{root}/{parent}", allow_not_found=True))
        for info in listing:
            if info.type == pafs.FileType.Directory and info.base_name not in committed:
                fs.delete_dir(info.path)


def checked_preprocess(previous: Manifest, settings: IngestSettings) -> dict[str, Any]:
    """The run's preprocessing spec as JSON data; refuses one that differs from what ``previous`` holds."""
    preprocess = json.loads(settings.preprocess.to_json())
    made_with = previous_preprocess(previous, settings)
    if made_with not in (None, preprocess):
        raise ValueError(
            f"{settings.output} holds slices made with preprocess {made_with} (manifest v{previous.version}); "
            f"this run asks for {preprocess}. Set ingest.preprocess to match, or ingest into a new output root"
        )
    return preprocess


def previous_preprocess(previous: Manifest, settings: IngestSettings) -> dict[str, Any] | None:
    """The preprocessing spec the slices of ``previous`` were made with (None when it holds none).

    A manifest written before versions recorded the spec still names it: every stored volume carries
    the spec it was made with in its zarr attributes. Volumes that disagree, or lack it, stop the run.
    """
    if previous.preprocess is not None:
        return previous.preprocess
    paths = [row["zarr_path"] for row in previous.current_scans() if row["status"] == "ok"]
    if not paths:
        return None
    root = open_root(settings.output, settings.storage, mode="r")
    specs = {json.dumps(volume_attrs(root, path)["provenance"].get("preprocess_spec"), sort_keys=True) for path in paths}
    if len(specs) > 1 or specs == {"null"}:
        raise ValueError(f"{settings.output}: manifest v{previous.version} records no preprocessing spec and its volumes "
                         f"name {' / '.join(sorted(specs))}; ingest into a new output root")
    return json.loads(specs.pop())


def plan_tasks(specs: list[DatasetSpec], storage: ObjectStoreConfig,
               previous: Manifest) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One Ray row per unit to process (new or changed), and how many units each dataset listed.

    Subject, session and sequence come from the stored key; the row's ``key`` is the unit's public key.
    """
    tasks, listed = [], {}
    for spec in specs:
        table = spec.load_sequence_table(storage)
        stored = {}
        for unit in scan_units(spec, list_objects(spec.source, storage)):
            scan_id = pseudonym(f"scan:{spec.name}/{unit.key}")
            stored[public_unit(spec, unit, scan_id).key] = unit, scan_id
        listed[spec.name] = len(stored)
        for public in plan([public_unit(spec, unit, scan_id) for unit, scan_id in stored.values()], previous):
            unit, scan_id = stored[public.key]
            try:
                subject, session = spec.subject_of(unit.key)
                problem = ""
            except ValueError as err:
                subject, session, problem = "", "", str(err).replace(unit.key, public.key)
            tasks.append({
                "dataset": spec.name,
                "key": public.key,
                "files": json.dumps([asdict(f) for f in unit.files]),
                "scan_id": scan_id,
                "subject": subject_pseudonym(spec, subject) if subject else "",
                "session": subject_pseudonym(spec, f"{subject}/{session}", "session") if session else "",
                "sequence": spec.sequence_of(unit.key, table),
                "problem": problem,
            })
    return tasks, listed


@dataclass(frozen=True)
class IngestPreview:
    """What an ingest run would process now (``preview_ingest``), by dataset."""

    output: str
    manifest_version: int
    listed: dict[str, int]  # dataset -> scan units in its source
    new: dict[str, list[str]]  # dataset -> public keys the ledger does not hold
    changed: dict[str, list[str]]  # dataset -> public keys whose ETag or size changed

    def summary(self, shown: int = 10) -> str:
        lines = [f"ingest preview of {self.output} (manifest v{self.manifest_version}); no scan was read, nothing written"]
        for dataset, count in self.listed.items():
            new, changed = self.new.get(dataset, []), self.changed.get(dataset, [])
            lines.append(f"  {dataset}: {count} listed, {len(new)} new, {len(changed)} changed, "
                         f"{count - len(new) - len(changed)} unchanged")
            lines += [f"    {kind} {key}" for kind, keys in (("new", new), ("changed", changed)) for key in keys[:shown]]
            hidden = max(len(new) - shown, 0) + max(len(changed) - shown, 0)
            if hidden:
                lines.append(f"    ... and {hidden} more")
        return "\n".join(lines)


def preview_ingest(specs: list[DatasetSpec], settings: IngestSettings) -> IngestPreview:
    """The units a run would process, from the source listings and the manifest alone (no Ray, no writes).

    Raises as the run would when ``settings.preprocess`` differs from the output root's.
    """
    previous = ManifestStore(settings.output, settings.storage).latest()
    checked_preprocess(previous, settings)
    tasks, listed = plan_tasks(specs, settings.storage, previous)
    held = {(row["dataset"], row["source_key"]) for row in previous.current_scans()}
    new: dict[str, list[str]] = defaultdict(list)
    changed: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        kind = changed if (task["dataset"], task["key"]) in held else new
        kind[task["dataset"]].append(task["key"])
    return IngestPreview(settings.output, previous.version, listed, dict(new), dict(changed))


def public_unit(spec: DatasetSpec, unit: ScanUnit, scan_id: str) -> ScanUnit:
    """The unit as outputs name it: its stored key, or ``redacted/<scan_id>`` (a series keeps its
    trailing ``/``) when the spec says keys may identify people. The files keep their stored keys."""
    if not spec.redact_keys:
        return unit
    return replace(unit, key=f"redacted/{scan_id}" + ("/" if unit.is_series else ""))


def locate_scan(specs: list[DatasetSpec], storage: ObjectStoreConfig, scan_id: str) -> list[str]:
    """The stored URIs of the units whose scan pseudonym is ``scan_id`` (how a redacted key is found again)."""
    return [unit_uri(spec.source, unit) for spec in specs
            for unit in scan_units(spec, list_objects(spec.source, storage))
            if pseudonym(f"scan:{spec.name}/{unit.key}") == scan_id]


def subject_pseudonym(spec: DatasetSpec, identifier: str, kind: str = "subject") -> str:
    """Keyed pseudonym of a subject (or ``subject/session``) within the spec's subject namespace."""
    return pseudonym(f"{kind}:{spec.subject_namespace or spec.name}/{identifier}")


def label_rows(specs: list[DatasetSpec], storage: ObjectStoreConfig) -> dict[str, list[dict[str, str]]]:
    """The ``labels`` rows of every spec with a label table, keyed by dataset; subjects pseudonymised."""
    labels = {}
    for spec in specs:
        if spec.label_table:
            labels[spec.name] = [
                {"dataset": spec.name, "subject": subject_pseudonym(spec, row["subject"]), "label": column, "value": value}
                for row in spec.load_labels(storage) for column, value in row.items() if column != "subject"
            ]
    return labels


def process_unit(task: dict[str, Any], settings: IngestSettings, specs: dict[str, DatasetSpec]) -> dict[str, Any]:
    """Ray Data map: one unit row -> its manifest row (JSON) and its kept slices (float16 bytes).

    A plain function, so Ray runs it in pooled worker processes that stay warm across runs.
    """
    spec = specs[task["dataset"]]
    unit = ScanUnit(spec.name, task["key"], tuple(SourceObject(**f) for f in json.loads(task["files"])))
    if task["problem"]:
        result = ScanResult(task["key"], "", reason="unmatched_subject", detail=task["problem"])
    else:
        payload = read_payload(spec.source, unit, settings.storage, anonymous_names=spec.redact_keys)
        result = process_scan(payload, settings.preprocess, settings.policy)
    row = scan_row(task, unit, result)
    if result.ok:
        root = open_root(settings.output, settings.storage, mode="r+")
        row["zarr_path"] = write_volume(root, spec.name, row["volume_id"], result.volume, zarr_attrs(row, result))
    return {
        "scan": json.dumps(row),
        "images": sample_stack([s[1] for s in result.slices]).tobytes(),
        "z": json.dumps([s[0] for s in result.slices]),
        "foreground": json.dumps([s[2] for s in result.slices]),
    }


def scan_row(task: dict[str, Any], unit: ScanUnit, result: ScanResult) -> dict[str, Any]:
    """The unit's ``scans`` row; ``zarr_path``, ``shards`` and ``run_id`` are filled in later."""
    volume = result.volume
    return {
        "scan_id": task["scan_id"],
        "volume_id": f"{task['scan_id']}-{result.digest[:12]}",
        "dataset": task["dataset"],
        "source_key": unit.key,
        "size": unit.size,
        "etag": unit.etag,
        "content_digest": result.digest,
        "status": "ok" if result.ok else "quarantined",
        "reason": result.reason,
        "detail": result.detail,
        "subject": task["subject"],
        "session": task["session"],
        "sequence": task["sequence"],
        "shape": list(volume.shape) if volume else None,
        "spacing": list(volume.spacing) if volume else None,
        "orientation": volume.orientation if volume else None,
        "slices_kept": len(result.slices),
        "zarr_path": "",
        "shards": [],
        "run_id": "",
        "ingest_version": INGEST_VERSION,
    }


def zarr_attrs(row: dict[str, Any], result: ScanResult) -> dict[str, Any]:
    """Attributes beside the voxels: geometry comes from ``write_volume``; all of it non-identifying."""
    keep = ("dataset", "volume_id", "subject", "session", "sequence", "ingest_version")
    return json.loads(json.dumps({
        **{k: row[k] for k in keep},
        "source_digest": result.digest,
        "provenance": result.volume.provenance,
        "acquisition": result.metadata,
    }, default=str))


def explode_slices(row: dict[str, Any], skip: set[str], slice_size: int) -> list[dict[str, Any]]:
    """One row per kept slice of a processed scan, carrying its sample JSON (none for ``skip``ped volumes)."""
    scan = json.loads(row["scan"])
    if scan["status"] != "ok" or scan["volume_id"] in skip:
        return []
    images = np.frombuffer(row["images"], dtype=np.float16).reshape(-1, slice_size, slice_size)
    out = []
    for image, z, fraction in zip(images, json.loads(row["z"]), json.loads(row["foreground"])):
        record = {"format": SAMPLE_FORMAT_VERSION, "dataset": scan["dataset"], "subject": scan["subject"],
                  "session": scan["session"], "sequence": scan["sequence"], "volume_id": scan["volume_id"],
                  "z": z, "foreground_fraction": fraction, "spacing": scan["spacing"]}
        out.append({"sample_key": sample_key(scan["volume_id"], z), "image": image, "record": json.dumps(record),
                    "volume_id": scan["volume_id"], "scan_id": scan["scan_id"], "dataset": scan["dataset"],
                    "subject": scan["subject"], "z": z, "foreground_fraction": fraction})
    return out


def write_shard_block(batch: dict[str, np.ndarray], settings: IngestSettings, run_id: str) -> dict[str, np.ndarray]:
    """Ray Data map_batches over blocks of ``shard_size`` shuffled slices: one tar per block.

    Returns the block's ``slices`` manifest rows (plus the shard's size in ``bytes``), without pixels.
    """
    fs, root = settings.storage.resolve(settings.output)
    keys = [str(k) for k in batch["sample_key"]]
    shard = f"shards/{run_id}/{shard_name(keys)}"
    samples = ((k, image, json.loads(record)) for k, image, record in zip(keys, batch["image"], batch["record"]))
    size = write_shard(fs, f"{root}/{shard}", samples)
    rows = {k: batch[k] for k in ("sample_key", "volume_id", "scan_id", "dataset", "subject", "z", "foreground_fraction")}
    return {**rows, "shard": np.array([shard] * len(keys)), "bytes": np.full(len(keys), size),
            "active": np.ones(len(keys), dtype=bool)}


def write_shards(processed: ray.data.Dataset, skip: set[str], settings: IngestSettings, run_id: str) -> list[dict[str, Any]]:
    """Shuffle every new slice globally (seeded), write shards of ``shard_size``; returns slice rows."""
    written = (
        processed.flat_map(explode_slices, fn_kwargs={"skip": skip, "slice_size": settings.preprocess.slice_size})
        .random_shuffle(seed=settings.shuffle_seed)
        .repartition(target_num_rows_per_block=settings.shard_size, strict=True)
        .map_batches(write_shard_block, fn_kwargs={"settings": settings, "run_id": run_id},
                     batch_size=None, compute=TaskPoolStrategy(size=settings.concurrency))
    )
    return [{**row, "z": int(row["z"]), "foreground_fraction": float(row["foreground_fraction"]),
             "bytes": int(row["bytes"]), "active": bool(row["active"])} for row in written.iter_rows()]


def write_qc(scan_rows: list[dict[str, Any]], settings: IngestSettings, run_id: str) -> dict[str, str]:
    """A montage PNG of mid-axial slices per dataset (read one chunk each from zarr) under ``qc/<run_id>/``."""
    root = open_root(settings.output, settings.storage, mode="r") if any(r["status"] == "ok" for r in scan_rows) else None
    tiles: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for row in scan_rows:
        if row["status"] == "ok" and len(tiles[row["dataset"]]) < QC_TILES_PER_DATASET:
            tiles[row["dataset"]].append((row["sequence"], read_axial_slice(root, row["zarr_path"], row["shape"][2] // 2)))
    fs, base = settings.storage.resolve(settings.output)
    paths = {}
    for dataset, items in tiles.items():
        buffer = io.BytesIO()
        montage(items).save(buffer, format="PNG")
        relative = f"qc/{run_id}/{dataset}.png"
        write_bytes(fs, f"{base}/{relative}", buffer.getvalue())
        paths[dataset] = f"{settings.output.rstrip('/')}/{relative}"
    return paths
