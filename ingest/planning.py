"""Planning an ingest run: which scan units to process, under which pseudonyms, and a preview of it.

The driver lists every dataset's source, groups the objects into scan units and keeps those the ledger
says are new or changed (``ingest.ledger.plan``). Each becomes a ``ScanTask``: the unit's public key
(its stored key, or ``redacted/<scan_id>`` when the spec says keys may identify people), its files, and
its subject, session and scan pseudonyms. ``preview_ingest`` reports the same plan and processes nothing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any

from datastore.manifest import LabelRow, Manifest, ManifestStore
from datastore.objectstore import ObjectStoreConfig
from ingest.deid import pseudonym
from ingest.ledger import plan
from ingest.settings import IngestSettings
from ingest.sources import ScanUnit, SourceObject, list_objects, scan_units, unit_uri
from ingest.spec import DatasetSpec


@dataclass(frozen=True)
class ScanTask:
    """One unit to process, as a Ray Data row (``as_row`` / ``from_row``): typed columns, no JSON."""

    dataset: str
    key: str  # the public key: what every output names the unit by
    files: tuple[SourceObject, ...]  # stored keys, relative to the dataset source
    scan_id: str
    subject: str  # pseudonym; "" when ``problem`` says why the key names no subject
    session: str
    sequence: str
    problem: str = ""

    @property
    def unit(self) -> ScanUnit:
        return ScanUnit(self.dataset, self.key, self.files)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ScanTask:
        return cls(**{**row, "files": tuple(SourceObject(**f) for f in row["files"])})


def plan_tasks(specs: list[DatasetSpec], storage: ObjectStoreConfig,
               previous: Manifest) -> tuple[list[ScanTask], dict[str, int]]:
    """The units to process (new or changed), and how many units each dataset listed.

    Subject, session and sequence come from the stored key; the task's ``key`` is the public key.
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
            tasks.append(ScanTask(
                dataset=spec.name, key=public.key, files=unit.files, scan_id=scan_id,
                subject=subject_pseudonym(spec, subject) if subject else "",
                session=subject_pseudonym(spec, f"{subject}/{session}", "session") if session else "",
                sequence=spec.sequence_of(unit.key, table), problem=problem,
            ))
    return tasks, listed


def public_unit(spec: DatasetSpec, unit: ScanUnit, scan_id: str) -> ScanUnit:
    """The unit as outputs name it: its stored key, or ``redacted/<scan_id>`` (a series keeps its
    trailing ``/``) when the spec says keys may identify people. The files keep their stored keys."""
    if not spec.redact_keys:
        return unit
    return replace(unit, key=f"redacted/{scan_id}" + ("/" if unit.is_series else ""))


def subject_pseudonym(spec: DatasetSpec, identifier: str, kind: str = "subject") -> str:
    """Keyed pseudonym of a subject (or ``subject/session``) within the spec's subject namespace."""
    return pseudonym(f"{kind}:{spec.subject_namespace or spec.name}/{identifier}")


def label_rows(specs: list[DatasetSpec], storage: ObjectStoreConfig) -> dict[str, list[LabelRow]]:
    """The ``labels`` rows of every spec with a label table, keyed by dataset; subjects pseudonymised."""
    return {spec.name: [LabelRow(spec.name, subject_pseudonym(spec, row["subject"]), column, value)
                        for row in spec.load_labels(storage) for column, value in row.items() if column != "subject"]
            for spec in specs if spec.label_table}


def locate_scan(specs: list[DatasetSpec], storage: ObjectStoreConfig, scan_id: str) -> list[str]:
    """The stored URIs of the units whose scan pseudonym is ``scan_id`` (how a redacted key is found again)."""
    return [unit_uri(spec.source, unit) for spec in specs
            for unit in scan_units(spec, list_objects(spec.source, storage))
            if pseudonym(f"scan:{spec.name}/{unit.key}") == scan_id]


class PreprocessMismatch(ValueError):
    """A run whose preprocessing spec differs from the one its output root was built with."""


def checked_preprocess(previous: Manifest, settings: IngestSettings) -> dict[str, Any]:
    """The run's preprocessing spec as JSON data; refuses one that differs from what ``previous`` records."""
    preprocess = json.loads(settings.preprocess.to_json())
    if previous.version and previous.preprocess != preprocess:
        raise PreprocessMismatch(
            f"{settings.output} holds slices made with preprocess {previous.preprocess} (manifest v{previous.version}); "
            f"this run asks for {preprocess}. Set ingest.preprocess to match, or ingest into a new output root"
        )
    return preprocess


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
    held = {(row.dataset, row.source_key) for row in previous.current_scans()}
    new: dict[str, list[str]] = defaultdict(list)
    changed: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        kind = changed if (task.dataset, task.key) in held else new
        kind[task.dataset].append(task.key)
    return IngestPreview(settings.output, previous.version, listed, dict(new), dict(changed))
