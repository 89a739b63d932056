"""Put the real MRI that packages ship into a bucket, laid out as a raw landing zone would be."""

from __future__ import annotations

from pathlib import Path

from datastore.objectstore import ObjectStoreConfig
from infra.local.catalogue import CatalogueEntry, entry


def scan_files(item: CatalogueEntry) -> list[Path]:
    """The files that make up one catalogue entry (a DICOM series folder yields each of its files)."""
    path = item.path
    if path is None:
        return []
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def upload_bundled(store: ObjectStoreConfig, bucket: str, datasets: dict[str, list[str]], prefix: str = "raw") -> dict[str, list[str]]:
    """Upload each dataset's catalogue entries to ``s3://bucket/prefix/DATASET/ENTRY/FILE``.

    Returns the keys written per dataset; an entry whose source is not installed is left out and
    reported by the caller (see ``missing_entries``).
    """
    client = store.boto3_client()
    written: dict[str, list[str]] = {}
    for dataset, names in datasets.items():
        keys = written.setdefault(dataset, [])
        for name in names:
            for file in scan_files(entry(name)):
                key = f"{prefix}/{dataset}/{name}/{file.name}"
                client.upload_file(str(file), bucket, key)
                keys.append(key)
    return written


def missing_entries(datasets: dict[str, list[str]]) -> list[CatalogueEntry]:
    return [entry(n) for names in datasets.values() for n in names if not entry(n).available]
