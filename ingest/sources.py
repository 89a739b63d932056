"""A dataset's raw objects: listed with size and ETag, grouped into scan units, fetched as payloads.

S3 listings come from boto3 (they carry the ETag); local folders use the file's mtime and size as the
ETag. A scan unit is one file, or every DICOM file of one folder (a series). Keys are relative to the
spec's ``source`` and use ``/``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from datastore.files import read_object
from datastore.objectstore import ObjectStoreConfig
from ingest.readers import FORMAT_SUFFIXES, ScanPayload
from ingest.spec import DatasetSpec


@dataclass(frozen=True)
class SourceObject:
    key: str  # relative to the dataset source
    size: int
    etag: str


@dataclass(frozen=True)
class ScanUnit:
    """One scan as stored: its key (a file, or a DICOM folder ending in '/') and the files that make it."""

    dataset: str
    key: str
    files: tuple[SourceObject, ...]

    @property
    def is_series(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def etag(self) -> str:
        """The object's ETag, or for a series a digest of its members' names and ETags."""
        if not self.is_series:
            return self.files[0].etag
        listing = "\n".join(f"{f.key}:{f.etag}" for f in sorted(self.files, key=lambda f: f.key))
        return "series-" + hashlib.sha256(listing.encode()).hexdigest()[:32]


def list_objects(source: str, storage: ObjectStoreConfig) -> list[SourceObject]:
    """Every object under ``source`` (``s3://bucket/prefix`` or a local folder), sorted by key."""
    if source.startswith("s3://"):
        return _list_s3(source, storage)
    _, root = storage.resolve(source)
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"dataset source {source} is not a folder")
    found = []
    for path in base.rglob("*"):
        if path.is_file():
            stat = path.stat()
            found.append(SourceObject(path.relative_to(base).as_posix(), stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}"))
    return sorted(found, key=lambda o: o.key)


def _list_s3(source: str, storage: ObjectStoreConfig) -> list[SourceObject]:
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    pages = storage.boto3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    found = []
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix):]
            if key and not key.endswith("/"):  # skip folder marker objects
                found.append(SourceObject(key, int(item["Size"]), item["ETag"].strip('"')))
    return sorted(found, key=lambda o: o.key)


def scan_units(spec: DatasetSpec, objects: list[SourceObject]) -> list[ScanUnit]:
    """The dataset's scan units: matching non-DICOM files alone, matching DICOM files per folder."""
    singles: list[ScanUnit] = []
    series: dict[str, list[SourceObject]] = defaultdict(list)
    for obj in objects:
        if not spec.matches(obj.key):
            continue
        if spec.is_dicom(obj.key):
            parent = PurePosixPath(obj.key).parent.as_posix()
            series["" if parent == "." else parent + "/"].append(obj)
        else:
            singles.append(ScanUnit(spec.name, obj.key, (obj,)))
    folders = [ScanUnit(spec.name, folder, tuple(files)) for folder, files in series.items()]
    return sorted(singles + folders, key=lambda u: u.key)


def unit_uri(source: str, unit: ScanUnit) -> str:
    """Where the unit lives, as a full URI or path (what quarantine messages name)."""
    return f"{source.rstrip('/')}/{unit.key}"


def read_payload(source: str, unit: ScanUnit, storage: ObjectStoreConfig, anonymous_names: bool = False) -> ScanPayload:
    """Fetch the unit's bytes as stored, each file under its own name (a series' files share one folder).

    With ``anonymous_names`` each file is named by its position and format suffix only, so that no
    reader message can repeat a name that identifies a person. ``compression=None``: pyarrow would
    otherwise inflate ``.gz`` objects on the fly, hiding a truncated gzip from the readers (and
    changing the content digest). Raises ``datastore.retry.StoreUnavailable`` naming the object when
    the store still fails after its retries.
    """
    files = {}
    for index, obj in enumerate(unit.files):
        name = PurePosixPath(obj.key).name
        files[anonymous_name(index, name) if anonymous_names else name] = read_object(storage, f"{source.rstrip('/')}/{obj.key}")
    return ScanPayload(unit_uri(source, unit), files)


def anonymous_name(index: int, name: str) -> str:
    """``NNNN`` plus the name's format suffix when it has one the readers know (``0003.dcm``, ``0000.nii.gz``)."""
    known = [suffix for suffixes, _ in FORMAT_SUFFIXES for suffix in suffixes if name.lower().endswith(suffix)]
    return f"{index:04d}{max(known, key=len, default='')}"
