"""An uploaded scan -> a preprocessed canonical volume, decoded exactly as ingest decodes a stored scan.

The bytes go through ingest's readers (format by name, else magic bytes; bounded gzip and zip
inflation; header dimension checks; the DICOM metadata allow-list), ingest's validation and the shared
``braindino.volumes.preprocess`` with the encoder's exported spec. Serving adds only what an upload
needs: the client's file name never reaches a message (the scan is called ``upload.<suffix>``, and the
members of a DICOM zip ``member-N.dcm``), a zip must hold one series, and failures become API errors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom

from braindino.volumes import CanonicalVolume, PreprocessSpec
from ingest.process import ScanPayload, ScanPolicy, process_scan
from ingest.readers import FORMAT_SUFFIXES, ScanRejected, sniff_format
from ingest.readers.archive import unzip_files
from serving.errors import ApiError

ACCEPTED = ".nii, .nii.gz, .mgz, .mgh, .nrrd, or a .zip of one DICOM series"


@dataclass(frozen=True)
class DecodedScan:
    """A decoded, validated, preprocessed upload: its format and canonical volume (which records the source grid)."""

    format: str
    volume: CanonicalVolume


def upload_key(filename: str) -> str:
    """``upload`` plus the recognised format suffix of the client's file name (the name itself is dropped)."""
    lower = filename.lower()
    for suffixes, _ in FORMAT_SUFFIXES:
        for suffix in sorted(suffixes, key=len, reverse=True):
            if lower.endswith(suffix):
                return f"upload{suffix}"
    return "upload"


def upload_payload(filename: str, raw: bytes, policy: ScanPolicy) -> ScanPayload:
    """The scan unit for ``raw``: one file, or a zip's members under neutral names (member names may identify)."""
    key = upload_key(filename)
    if sniff_format(key, raw) != "zip":
        return ScanPayload(key, {key: raw})
    members = unzip_files(key, raw, policy)
    series = dicom_series(members)
    if len(series) > 1:
        raise ScanRejected(key, "several_series", f"{key} holds {len(series)} DICOM series; send a zip of one series")
    return ScanPayload(key, {f"member-{i:05d}.dcm": members[name] for i, name in enumerate(sorted(members))})


def dicom_series(files: dict[str, bytes]) -> set[str]:
    """The SeriesInstanceUIDs among ``files`` (headers only; files that are not DICOM are left to the reader)."""
    found = set()
    for raw in files.values():
        try:
            header = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # not DICOM: the reader skips it or refuses the unit
            continue
        found.add(str(header.get("SeriesInstanceUID", "")))
    return found


def decode_scan(filename: str, raw: bytes, spec: PreprocessSpec, policy: ScanPolicy) -> DecodedScan:
    """Decode, validate and preprocess an upload; ``ApiError`` (415 not a scan, 422 unusable) naming the reason."""
    try:
        payload = upload_payload(filename, raw, policy)
    except ScanRejected as rejected:
        raise rejection(rejected.reason, rejected.detail) from None
    result = process_scan(payload, spec, policy)
    if not result.ok:
        raise rejection(result.reason, result.detail)
    return DecodedScan(result.volume.provenance.get("format", ""), result.volume)


def rejection(reason: str, detail: str) -> ApiError:
    """415 for bytes that are no scan format at all, 422 for a scan that cannot be used."""
    if reason == "bad_magic":
        return ApiError(415, reason, f"{detail}. Accepted: {ACCEPTED}")
    if reason == "unsupported_4d":
        detail += " (for this service: the Ingress user_config four_d)"
    return ApiError(422, reason, detail)
