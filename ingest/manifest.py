"""The manifest: the versioned Parquet ledger of every scan and slice, and the only thing readers list.

Layout under the output root::

    manifest/runs/<run_id>/scans.parquet     full tables as of that run (written first)
    manifest/runs/<run_id>/slices.parquet
    manifest/runs/<run_id>/labels.parquet
    manifest/v000007.json                    the commit: names the run whose tables are current

A run writes its zarr arrays, shards and tables, then the version file last; readers take the highest
``v*.json`` and never list data folders, so a run that dies before its commit leaves nothing visible.
One writer per output root at a time.

Ledger rules (``plan`` and ``next_tables``): a unit whose key is new, or whose ETag or size differs from
its current row, is processed. If its content digest is unchanged, the current row only takes the new
ETag and size; otherwise the old row becomes ``superseded`` (its slices ``active = false``) and the new
row is appended. Unchanged units are not read at all.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ingest.sources import ScanUnit
from ingest.storage import ObjectStoreConfig
from ingest.writers.files import ensure_parent, write_bytes

SCHEMA_VERSION = 1
CURRENT = ("ok", "quarantined")  # statuses of a key's current row; "superseded" rows are history

SCANS_SCHEMA = pa.schema(
    [
        ("scan_id", pa.string()),  # keyed pseudonym of dataset + source key: stable across versions
        ("volume_id", pa.string()),  # scan_id + content digest prefix: one per content version
        ("dataset", pa.string()),
        ("source_key", pa.string()),  # relative to the dataset source (ledger column)
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("content_digest", pa.string()),  # SHA-256 over the unit's file contents
        ("status", pa.string()),  # ok | quarantined | superseded
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("subject", pa.string()),  # keyed pseudonym
        ("session", pa.string()),  # keyed pseudonym, "" when the dataset has no sessions
        ("sequence", pa.string()),
        ("shape", pa.list_(pa.int32())),  # null when quarantined
        ("spacing", pa.list_(pa.float64())),
        ("orientation", pa.string()),
        ("slices_kept", pa.int32()),
        ("zarr_path", pa.string()),  # relative to the output root
        ("shards", pa.list_(pa.string())),  # relative to the output root
        ("run_id", pa.string()),
        ("ingest_version", pa.int32()),
    ],
    metadata={"braindino.manifest.schema_version": str(SCHEMA_VERSION)},
)

SLICES_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),  # relative to the output root
        ("sample_key", pa.string()),  # the WebDataset __key__
        ("volume_id", pa.string()),
        ("scan_id", pa.string()),
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("z", pa.int32()),  # axial index in the zarr volume
        ("foreground_fraction", pa.float32()),
        ("active", pa.bool_()),  # false once the scan is superseded
    ],
    metadata={"braindino.manifest.schema_version": str(SCHEMA_VERSION)},
)

LABELS_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("subject", pa.string()),  # keyed pseudonym, as in scans
        ("label", pa.string()),  # the label table's column name
        ("value", pa.string()),
    ],
    metadata={"braindino.manifest.schema_version": str(SCHEMA_VERSION)},
)
TABLES = {"scans": SCANS_SCHEMA, "slices": SLICES_SCHEMA, "labels": LABELS_SCHEMA}


@dataclass(frozen=True)
class Manifest:
    version: int  # 0: nothing committed yet
    run_id: str
    scans: pa.Table
    slices: pa.Table
    labels: pa.Table
    datasets: dict[str, dict[str, str]]  # name -> {"licence", "citation", "source" (where its raw scans are)}
    preprocess: dict[str, Any] | None = None  # the PreprocessSpec every slice was made with (None: not recorded)

    @classmethod
    def empty(cls) -> Manifest:
        return cls(0, "", SCANS_SCHEMA.empty_table(), SLICES_SCHEMA.empty_table(), LABELS_SCHEMA.empty_table(), {})

    def current_scans(self) -> list[dict[str, Any]]:
        """The current row of every key (status ok or quarantined)."""
        return self.scans.filter(pc.is_in(self.scans["status"], pa.array(CURRENT))).to_pylist()

    def active_slices(self) -> pa.Table:
        """The slices training may use: those of scans that are ok and not superseded."""
        return self.slices.filter(self.slices["active"])

    def inactive_sample_keys(self) -> set[str]:
        """Samples of superseded scans: they stay inside shards that also hold active samples, so a
        reader of ``active_slices()``'s shards drops these ``__key__``s (usually a short list)."""
        return set(self.slices.filter(pc.invert(self.slices["active"]))["sample_key"].to_pylist())


class ManifestStore:
    """Reads the latest committed manifest under ``root`` and commits new versions."""

    def __init__(self, root: str, storage: ObjectStoreConfig) -> None:
        self.fs, self.root = storage.resolve(root)

    def versions(self) -> list[int]:
        selector = pafs.FileSelector(f"{self.root}/manifest", allow_not_found=True)
        names = (info.base_name for info in self.fs.get_file_info(selector) if info.is_file)
        return sorted(int(n[1:-5]) for n in names if n.startswith("v") and n.endswith(".json") and n[1:-5].isdigit())

    def committed_runs(self) -> set[str]:
        """The run ids named by any committed version."""
        return {json.loads(self._read(f"manifest/v{v:06d}.json"))["run_id"] for v in self.versions()}

    def latest(self) -> Manifest:
        versions = self.versions()
        if not versions:
            return Manifest.empty()
        commit = json.loads(self._read(f"manifest/v{versions[-1]:06d}.json"))
        if commit["schema_version"] != SCHEMA_VERSION:
            raise ValueError(
                f"{self.root}/manifest/v{versions[-1]:06d}.json has manifest schema {commit['schema_version']}; "
                f"this code reads schema {SCHEMA_VERSION}"
            )
        tables = {name: pq.read_table(f"{self.root}/{commit['tables'][name]}", filesystem=self.fs, schema=schema)
                  for name, schema in TABLES.items()}
        return Manifest(commit["version"], commit["run_id"], datasets=commit["datasets"],
                        preprocess=commit.get("preprocess"), **tables)

    def write_tables(self, run_id: str, tables: dict[str, pa.Table]) -> dict[str, str]:
        """Write a run's full ``scans``, ``slices`` and ``labels`` (invisible until ``commit``); returns
        their paths relative to the root."""
        folder = f"manifest/runs/{run_id}"
        ensure_parent(self.fs, f"{self.root}/{folder}/scans.parquet")
        paths = {}
        for name in TABLES:
            paths[name] = f"{folder}/{name}.parquet"
            pq.write_table(tables[name], f"{self.root}/{paths[name]}", filesystem=self.fs)
        return paths

    def commit(self, previous: Manifest, run_id: str, tables: dict[str, str], datasets: dict[str, dict[str, str]],
               preprocess: dict[str, Any]) -> int:
        """Make a run's tables current by writing the next version file; refuses if another run committed.

        ``datasets`` (name -> licence, citation and source) is merged into the previous version's; ``preprocess``
        is the spec the run's slices were made with (the same for every run of one root).
        """
        latest = self.versions()
        if (latest[-1] if latest else 0) != previous.version:
            raise RuntimeError(
                f"{self.root}/manifest moved from v{previous.version} to v{latest[-1]} during run {run_id}; "
                "another ingest wrote to this output root. Rerun: the ledger picks up what is still missing"
            )
        version = previous.version + 1
        record = {"version": version, "schema_version": SCHEMA_VERSION, "run_id": run_id,
                  "tables": tables, "datasets": {**previous.datasets, **datasets}, "preprocess": preprocess,
                  "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_bytes(self.fs, f"{self.root}/manifest/v{version:06d}.json", json.dumps(record, indent=1).encode())
        return version

    def _read(self, relative: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{relative}") as stream:
            return stream.read()


def plan(units: Iterable[ScanUnit], manifest: Manifest) -> list[ScanUnit]:
    """The units to process: keys not in the ledger, or whose ETag or size changed."""
    current = {(row["dataset"], row["source_key"]): row for row in manifest.current_scans()}
    todo = []
    for unit in units:
        row = current.get((unit.dataset, unit.key))
        if row is None or row["etag"] != unit.etag or row["size"] != unit.size:
            todo.append(unit)
    return todo


def next_tables(manifest: Manifest, scan_rows: list[dict[str, Any]], slice_rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """The next version's tables: the previous ones with this run's rows merged in by the ledger rules."""
    new = {(r["dataset"], r["source_key"]): r for r in scan_rows}
    superseded: list[str] = []
    kept: list[dict[str, Any]] = []
    for row in manifest.scans.to_pylist():
        fresh = new.get((row["dataset"], row["source_key"]))
        if fresh is not None and row["status"] in CURRENT:
            if fresh["content_digest"] == row["content_digest"]:
                row = {**row, "etag": fresh["etag"], "size": fresh["size"]}
                del new[(row["dataset"], row["source_key"])]
            else:
                row = {**row, "status": "superseded"}
                superseded.append(row["volume_id"])
        kept.append(row)
    scans = pa.Table.from_pylist(kept + list(new.values()), schema=SCANS_SCHEMA)
    old = manifest.slices
    if superseded:
        still_active = pc.and_(old["active"], pc.invert(pc.is_in(old["volume_id"], pa.array(superseded))))
        old = old.set_column(old.schema.get_field_index("active"), "active", still_active)
    fresh_ids = {r["volume_id"] for r in new.values()}
    fresh_slices = pa.Table.from_pylist([s for s in slice_rows if s["volume_id"] in fresh_ids], schema=SLICES_SCHEMA)
    return scans, pa.concat_tables([old, fresh_slices])


def next_labels(manifest: Manifest, labels: dict[str, list[dict[str, str]]]) -> pa.Table:
    """The previous labels with those of every dataset in ``labels`` (dataset -> rows) replaced."""
    old = manifest.labels
    if labels:
        old = old.filter(pc.invert(pc.is_in(old["dataset"], pa.array(list(labels)))))
    fresh = pa.Table.from_pylist([row for rows in labels.values() for row in rows], schema=LABELS_SCHEMA)
    return pa.concat_tables([old, fresh])


def unchanged_content(manifest: Manifest, scan_rows: list[dict[str, Any]]) -> set[str]:
    """volume_ids of processed rows whose content equals their key's current row (re-uploads, touched files)."""
    current = {(r["dataset"], r["source_key"]): r["content_digest"] for r in manifest.current_scans()}
    return {r["volume_id"] for r in scan_rows if current.get((r["dataset"], r["source_key"])) == r["content_digest"]}
