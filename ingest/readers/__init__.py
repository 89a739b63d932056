"""Readers: one scan unit's bytes -> a ``RawScan`` (voxels + RAS affine + allow-listed metadata), or ``ScanRejected``.

The format is chosen by file name (``.nii``, ``.nii.gz``, ``.mgh``, ``.mgz``, ``.nrrd``, ``.zip``; several
files or ``.dcm`` mean DICOM) and, for unknown names, by the content's magic bytes.
"""

from __future__ import annotations

from ingest.readers.archive import ZIP_MAGIC, unzip_files
from ingest.readers.decoding import is_gzip
from ingest.readers.dicom import read_dicom
from ingest.readers.mgh import read_mgh
from ingest.readers.nifti import read_nifti
from ingest.readers.nrrd_reader import read_nrrd
from ingest.readers.scan import RawScan, ScanPayload, ScanPolicy, ScanRejected

__all__ = ["FORMAT_SUFFIXES", "RawScan", "ScanPayload", "ScanPolicy", "ScanRejected", "read_scan", "sniff_format"]

READERS = {"nifti": read_nifti, "mgh": read_mgh, "nrrd": read_nrrd}
FORMAT_SUFFIXES = (  # file name endings that name a format, checked before any magic bytes
    ((".nii", ".nii.gz"), "nifti"),
    ((".mgh", ".mgz", ".mgh.gz"), "mgh"),
    ((".nrrd",), "nrrd"),
    ((".zip",), "zip"),
    ((".dcm", ".ima"), "dicom"),
)


def read_scan(payload: ScanPayload, policy: ScanPolicy | None = None) -> RawScan:
    """Decode one scan unit; raises ``ScanRejected`` with a stable reason code for anything unreadable."""
    policy = policy or ScanPolicy()
    if not payload.files:
        raise ScanRejected(payload.key, "empty_payload", f"{payload.key} has no files; check the source listing")
    if len(payload.files) > 1:
        return read_dicom(payload.key, payload.files, policy)
    (name, raw), = payload.files.items()
    kind = sniff_format(name, raw)
    if kind == "zip":
        return read_dicom(payload.key, unzip_files(payload.key, raw, policy), policy)
    if kind == "dicom":
        return read_dicom(payload.key, payload.files, policy)
    return READERS[kind](payload.key, raw, policy)


def sniff_format(name: str, raw: bytes) -> str:
    """``nifti``, ``mgh``, ``nrrd``, ``zip`` or ``dicom`` from the file name, else from the magic bytes."""
    lower = name.lower()
    for suffixes, kind in FORMAT_SUFFIXES:
        if lower.endswith(suffixes):
            return kind
    if raw.startswith(b"NRRD"):
        return "nrrd"
    if raw.startswith(ZIP_MAGIC):
        return "zip"
    if raw[128:132] == b"DICM":
        return "dicom"
    if is_gzip(raw) or raw[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return "nifti"
    return "dicom"
