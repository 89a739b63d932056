"""A dataset spec: where a dataset's raw scans live and how to read names, subjects and sequences from keys.

One YAML file per dataset under ``configs/datasets/``; adding a dataset is adding a file. Keys are
matched relative to ``source`` with ``/`` separators. Globs use ``fnmatch`` rules (``*`` also crosses
``/``). ``subject_pattern`` is a regex searched in the relative key whose named group ``subject``
(and optional ``session``) name the person; single-subject datasets (templates) set ``subject``
instead. Sequence: the sidecar table's entry for the key, else the first matching rule, else
``default_sequence``. An optional label table (one row per subject) lands in the manifest's ``labels``
table with its subjects pseudonymised. Subjects are pseudonymised within ``subject_namespace`` (default: the dataset
name); datasets that hold the same people (ICBM 2009a and 2009c) name one namespace. Files in one folder whose suffix is in ``dicom_suffixes`` form one series unit.
When a bucket's keys may identify people (a PACS export named by patient), ``redact_keys: true`` makes
every output (manifest, logs, MLflow, quarantine details) name a scan ``redacted/<scan_id>`` instead;
``braindino ingest --locate SCAN_ID`` finds the stored key again for whoever may read the bucket.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from braindino.config import load_config
from datastore.objectstore import ObjectStoreConfig


@dataclass(frozen=True)
class SequenceRule:
    """Keys matching ``pattern`` (a regex, searched) hold ``sequence`` (T1w, T2w, FLAIR, DWI, ...)."""

    pattern: str
    sequence: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str  # s3://bucket/prefix or a local folder
    licence: str
    citation: str = ""
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    subject: str = ""  # fixed subject for single-subject datasets; else subject_pattern applies
    subject_namespace: str = ""  # datasets sharing people share a namespace (default: the dataset name)
    subject_pattern: str = r"^(?P<subject>[^/]+)/"
    sequence_rules: list[SequenceRule] = field(default_factory=list)
    sequence_table: str = ""  # optional CSV (s3:// or local) with columns key,sequence
    label_table: str = ""  # optional CSV (s3:// or local): a subject column (as keys give it), then labels
    default_sequence: str = "unknown"
    dicom_suffixes: list[str] = field(default_factory=lambda: [".dcm", ".ima", ""])
    redact_keys: bool = False  # keys may hold names, IDs or dates: outputs name scans "redacted/<scan_id>"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name):
            raise ValueError(f"dataset name {self.name!r} must be lower-case letters, digits, '-' or '_'")
        pattern = self._compile(self.subject_pattern, "subject_pattern")
        if not self.subject and "subject" not in pattern.groupindex:
            raise ValueError(f"subject_pattern {self.subject_pattern!r} needs a named group (?P<subject>...) or set subject")
        for rule in self.sequence_rules:
            self._compile(rule.pattern, "sequence_rules.pattern")

    def matches(self, key: str) -> bool:
        """Whether the relative ``key`` is part of the dataset (included and not excluded)."""
        included = any(fnmatch.fnmatchcase(key, glob) for glob in self.include)
        return included and not any(fnmatch.fnmatchcase(key, glob) for glob in self.exclude)

    def is_dicom(self, key: str) -> bool:
        return PurePosixPath(key).suffix.lower() in self.dicom_suffixes

    def subject_of(self, key: str) -> tuple[str, str]:
        """``(subject, session)`` for a relative key; the session is "" when the pattern has none."""
        if self.subject:
            return self.subject, ""
        found = re.search(self.subject_pattern, key)
        if not found or not found.group("subject"):
            raise ValueError(f"dataset {self.name}: key {key!r} does not match subject_pattern {self.subject_pattern!r}")
        groups = found.groupdict()
        return groups["subject"], groups.get("session") or ""

    def sequence_of(self, key: str, table: dict[str, str]) -> str:
        """The sequence of a relative key, given the loaded sidecar ``table`` (see ``load_sequence_table``)."""
        if key in table:
            return table[key]
        for rule in self.sequence_rules:
            if re.search(rule.pattern, key):
                return rule.sequence
        return self.default_sequence

    def load_sequence_table(self, storage: ObjectStoreConfig) -> dict[str, str]:
        """The sidecar ``key -> sequence`` table, or {} when the spec names none."""
        if not self.sequence_table:
            return {}
        return {row["key"]: row["sequence"] for row in read_csv(self.sequence_table, storage, ("key", "sequence"))}

    def load_labels(self, storage: ObjectStoreConfig) -> list[dict[str, str]]:
        """The label table's rows (raw subject ids: pseudonymise before they leave the job), or []."""
        return read_csv(self.label_table, storage, ("subject",)) if self.label_table else []

    def _compile(self, pattern: str, what: str) -> re.Pattern:
        try:
            return re.compile(pattern)
        except re.error as err:
            raise ValueError(f"dataset {self.name}: {what} {pattern!r} is not a valid regex: {err}") from err


def read_csv(uri: str, storage: ObjectStoreConfig, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a small CSV table stored on S3 or local disk, which must have the ``required`` columns."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as stream:
        reader = csv.DictReader(io.StringIO(stream.read().decode("utf-8")))
        rows = list(reader)
    missing = sorted(set(required) - set(reader.fieldnames or ()))
    if missing:
        raise ValueError(f"{uri}: table needs the columns {list(required)} (missing {missing})")
    return rows


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DatasetSpec:
    """A dataset spec from its YAML file (errors name the file and the key)."""
    return load_config(DatasetSpec, path, overrides)


def spec_paths(folder: str | Path) -> list[Path]:
    """Every registered dataset spec: the ``*.yaml`` files of ``folder``, sorted."""
    paths = sorted(Path(folder).glob("*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no dataset specs (*.yaml) in {folder}")
    return paths
