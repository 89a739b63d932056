"""The manifest: the versioned Parquet ledger of every scan and slice, and the only thing readers list.

Layout under the output root (manifest layout ``MANIFEST_VERSION``)::

    manifest/runs/<run_id>/scans.parquet     full tables as of that run (written first)
    manifest/runs/<run_id>/slices.parquet
    manifest/runs/<run_id>/labels.parquet
    manifest/v000007.json                    the commit (``Commit``): names the run whose tables are current

A run writes its zarr arrays, shards and tables, then the commit last; readers take the highest
``v*.json`` and never list data folders, so a run that dies before its commit leaves nothing visible
(``ManifestStore.sweep_uncommitted`` deletes what it left). One writer per output root at a time.

Each table's row is one dataclass (``ScanRow``, ``SliceRow``, ``LabelRow``) whose fields declare their
Arrow types; the schemas and tables are built from them. Every commit records the preprocessing
spec its slices were made with. Layout 1 (before that record was required) is refused by readers;
``datastore.upgrade.upgrade_manifest`` upgrades such a root once (the ingest job runs it first).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from braindino.volumes import PreprocessSpec
from datastore.files import abort_unfinished_uploads, delete_folder, write_bytes
from datastore.objectstore import ObjectStoreConfig
from datastore.shards import SHARDS_FOLDER

MANIFEST_VERSION = 2
VERSION_KEY = "braindino.manifest.schema_version"  # in every table's Arrow metadata
CURRENT = ("ok", "quarantined")  # statuses of a key's current row; "superseded" rows are history
UPGRADE_HINT = "upgrade the root once with `braindino ingest --upgrade-manifest --set ingest.output=ROOT`"

Row = TypeVar("Row", bound="TableRow")


def column(arrow_type: pa.DataType) -> Any:
    """A row field stored in an Arrow column of ``arrow_type``."""
    return field(metadata={"arrow": arrow_type})


class TableRow:
    """A row of one manifest table: subclasses are frozen dataclasses whose fields are ``column``s."""

    @classmethod
    def schema(cls) -> pa.Schema:
        return pa.schema([(f.name, f.metadata["arrow"]) for f in fields(cls)],
                         metadata={VERSION_KEY: str(MANIFEST_VERSION)})

    @classmethod
    def table(cls, rows: Iterable[TableRow]) -> pa.Table:
        return pa.Table.from_pylist([asdict(row) for row in rows], schema=cls.schema())

    @classmethod
    def rows(cls: type[Row], table: pa.Table) -> list[Row]:
        return [cls(**row) for row in table.select(cls.schema().names).to_pylist()]


@dataclass(frozen=True)
class ScanRow(TableRow):
    """One content version of one scan unit: ``ok``, ``quarantined`` (with a reason) or ``superseded``."""

    scan_id: str = column(pa.string())  # keyed pseudonym of dataset + source key: stable across versions
    volume_id: str = column(pa.string())  # scan_id + content digest prefix: one per content version
    dataset: str = column(pa.string())
    source_key: str = column(pa.string())  # relative to the dataset source (ledger column)
    size: int = column(pa.int64())
    etag: str = column(pa.string())
    content_digest: str = column(pa.string())  # SHA-256 over the unit's file contents
    status: str = column(pa.string())  # ok | quarantined | superseded
    reason: str | None = column(pa.string())
    detail: str | None = column(pa.string())
    subject: str = column(pa.string())  # keyed pseudonym
    session: str = column(pa.string())  # keyed pseudonym, "" when the dataset has no sessions
    sequence: str = column(pa.string())
    shape: list[int] | None = column(pa.list_(pa.int32()))  # null when quarantined
    spacing: list[float] | None = column(pa.list_(pa.float64()))
    orientation: str | None = column(pa.string())
    slices_kept: int = column(pa.int32())
    zarr_path: str = column(pa.string())  # relative to the output root
    shards: list[str] = column(pa.list_(pa.string()))  # relative to the output root
    run_id: str = column(pa.string())
    ingest_version: int = column(pa.int32())


@dataclass(frozen=True)
class SliceRow(TableRow):
    """One kept axial slice and the shard that holds it."""

    shard: str = column(pa.string())  # relative to the output root
    sample_key: str = column(pa.string())  # the WebDataset __key__
    volume_id: str = column(pa.string())
    scan_id: str = column(pa.string())
    dataset: str = column(pa.string())
    subject: str = column(pa.string())
    z: int = column(pa.int32())  # axial index in the zarr volume
    foreground_fraction: float = column(pa.float32())
    active: bool = column(pa.bool_())  # false once the scan is superseded


@dataclass(frozen=True)
class LabelRow(TableRow):
    """One value of a dataset's label table."""

    dataset: str = column(pa.string())
    subject: str = column(pa.string())  # keyed pseudonym, as in scans
    label: str = column(pa.string())  # the label table's column name
    value: str = column(pa.string())


SCANS_SCHEMA, SLICES_SCHEMA, LABELS_SCHEMA = ScanRow.schema(), SliceRow.schema(), LabelRow.schema()
TABLES = {"scans": SCANS_SCHEMA, "slices": SLICES_SCHEMA, "labels": LABELS_SCHEMA}


class ManifestLayoutError(ValueError):
    """A commit written by another manifest layout than this code reads."""


class ManifestMissing(FileNotFoundError):
    """An output root with no committed manifest where a job needs one."""


@dataclass(frozen=True)
class Commit:
    """``manifest/vNNNNNN.json``: the run whose tables are current, the datasets' licences and the
    preprocessing spec every slice was made with (``PreprocessSpec`` JSON data)."""

    version: int
    run_id: str
    tables: dict[str, str]  # table name -> Parquet path relative to the root
    datasets: dict[str, dict[str, str]]  # name -> {"licence", "citation", "source" (where its raw scans are)}
    preprocess: dict[str, Any]
    committed_at: str
    schema_version: int = MANIFEST_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str, where: str) -> Commit:
        """Parse a commit; raises ``ManifestLayoutError`` (naming ``where``) for another layout."""
        raw = json.loads(data)
        layout = raw.get("schema_version")
        if layout != MANIFEST_VERSION:
            hint = f": {UPGRADE_HINT}" if isinstance(layout, int) and layout < MANIFEST_VERSION else ""
            raise ManifestLayoutError(f"{where} has manifest schema {layout}; this code reads schema "
                                      f"{MANIFEST_VERSION}{hint}")
        commit = cls(**raw)
        PreprocessSpec.from_json(json.dumps(commit.preprocess))  # refuses a record no reader could use
        return commit


@dataclass(frozen=True)
class Manifest:
    version: int  # 0: nothing committed yet
    run_id: str
    scans: pa.Table
    slices: pa.Table
    labels: pa.Table
    datasets: dict[str, dict[str, str]]  # name -> {"licence", "citation", "source" (where its raw scans are)}
    preprocess: dict[str, Any] | None = None  # the PreprocessSpec every slice was made with (None for version 0)

    @classmethod
    def empty(cls) -> Manifest:
        return cls(0, "", SCANS_SCHEMA.empty_table(), SLICES_SCHEMA.empty_table(), LABELS_SCHEMA.empty_table(), {})

    def current_scans(self) -> list[ScanRow]:
        """The current row of every key (status ok or quarantined)."""
        return ScanRow.rows(self.scans.filter(pc.is_in(self.scans["status"], pa.array(CURRENT))))

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
        self.uri, self.storage = root, storage

    def versions(self) -> list[int]:
        selector = pafs.FileSelector(f"{self.root}/manifest", allow_not_found=True)
        names = (info.base_name for info in self.fs.get_file_info(selector) if info.is_file)
        return sorted(int(n[1:-5]) for n in names if n.startswith("v") and n.endswith(".json") and n[1:-5].isdigit())

    def commit_path(self, version: int) -> str:
        return f"{self.root}/manifest/v{version:06d}.json"

    def commit_record(self, version: int) -> dict[str, Any]:
        """The raw JSON of one version file, whatever its layout."""
        with self.fs.open_input_stream(self.commit_path(version)) as stream:
            return json.loads(stream.read())

    def committed_runs(self) -> set[str]:
        """The run ids named by any committed version."""
        return {self.commit_record(v)["run_id"] for v in self.versions()}

    def read_tables(self, tables: dict[str, str]) -> dict[str, pa.Table]:
        """A commit's ``scans``, ``slices`` and ``labels`` tables (paths relative to the root)."""
        return {name: pq.read_table(f"{self.root}/{tables[name]}", filesystem=self.fs, schema=schema)
                for name, schema in TABLES.items()}

    def latest(self) -> Manifest:
        versions = self.versions()
        if not versions:
            return Manifest.empty()
        path = self.commit_path(versions[-1])
        with self.fs.open_input_stream(path) as stream:
            commit = Commit.from_json(stream.read(), path)
        return Manifest(commit.version, commit.run_id, datasets=commit.datasets, preprocess=commit.preprocess,
                        **self.read_tables(commit.tables))

    def write_tables(self, run_id: str, tables: dict[str, pa.Table]) -> dict[str, str]:
        """Write a run's full ``scans``, ``slices`` and ``labels`` (invisible until ``commit``); returns
        their paths relative to the root."""
        paths = {}
        for name in TABLES:
            paths[name] = f"manifest/runs/{run_id}/{name}.parquet"
            buffer = pa.BufferOutputStream()
            pq.write_table(tables[name], buffer)
            write_bytes(self.fs, f"{self.root}/{paths[name]}", buffer.getvalue().to_pybytes())
        return paths

    def commit(self, previous: Manifest, run_id: str, tables: dict[str, str], datasets: dict[str, dict[str, str]],
               preprocess: dict[str, Any]) -> int:
        """Make a run's tables current by writing the next version file; refuses if another run committed.

        ``datasets`` (name -> licence, citation and source) is merged into the previous version's; ``preprocess``
        is the spec the run's slices were made with (the same for every run of one root).
        """
        return self.append(Commit(previous.version + 1, run_id, tables, {**previous.datasets, **datasets},
                                  preprocess, committed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))

    def append(self, commit: Commit) -> int:
        """Write ``commit`` as the next version; refuses when the latest version is not the one before it."""
        versions = self.versions()
        latest = versions[-1] if versions else 0
        if latest != commit.version - 1:
            raise RuntimeError(
                f"{self.root}/manifest moved from v{commit.version - 1} to v{latest} during run {commit.run_id}; "
                "another ingest wrote to this output root. Rerun: the ledger picks up what is still missing"
            )
        write_bytes(self.fs, self.commit_path(commit.version), commit.to_json())
        return commit.version

    def sweep_uncommitted(self) -> None:
        """Delete the shard, table and QC folders of runs that died before their commit, and abort the uploads
        they left unfinished (one writer per root)."""
        abort_unfinished_uploads(self.storage, self.uri)
        committed = self.committed_runs()
        for parent in (SHARDS_FOLDER, "manifest/runs", "qc"):
            listing = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{parent}", allow_not_found=True))
            for info in listing:
                if info.type == pafs.FileType.Directory and info.base_name not in committed:
                    delete_folder(self.fs, info.path, self.storage)
