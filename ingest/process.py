"""The per-scan step the ingest job maps over its inputs: bytes in, slices or a quarantine record out.

``process_scan`` is pure (no I/O, no Ray) and total: any failure, expected or not, becomes a
quarantined ``ScanResult`` with a stable reason code, so one bad file never stops a run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from braindino.volumes import CanonicalVolume, PreprocessSpec, Slice, preprocess
from ingest.readers import read_scan
from ingest.readers.scan import ScanPayload, ScanPolicy, ScanRejected
from ingest.validation import ValidationLimits, validate

__all__ = ["ScanPayload", "ScanPolicy", "ScanResult", "content_digest", "process_scan"]

PROVENANCE_KEYS = ("four_d_policy", "volumes_in_scan", "dicom_layout")  # reader choices copied into provenance


@dataclass(frozen=True)
class ScanResult:
    """The outcome for one scan unit: a canonical volume and its slices, or a quarantine reason."""

    key: str
    digest: str
    volume: CanonicalVolume | None = None
    slices: list[Slice] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def content_digest(payload: ScanPayload) -> str:
    """SHA-256 over the scan's file contents, independent of file names and their order."""
    file_digests = sorted(hashlib.sha256(raw).digest() for raw in payload.files.values())
    return hashlib.sha256(b"".join(file_digests)).hexdigest()


def process_scan(
    payload: ScanPayload,
    spec: PreprocessSpec,
    policy: ScanPolicy = ScanPolicy(),
    limits: ValidationLimits = ValidationLimits(),
) -> ScanResult:
    """Read, validate and preprocess one scan unit; never raises for bad input."""
    try:
        digest = content_digest(payload)
    except Exception as err:  # a payload that is not name -> bytes
        return ScanResult(payload_key(payload), "", reason="bad_payload", detail=f"cannot hash the payload files: {err!r}")
    try:
        scan = read_scan(payload, policy)
        validate(payload.key, scan, limits)
        provenance = {"format": scan.format, **{k: v for k, v in scan.metadata.items() if k in PROVENANCE_KEYS}}
        volume, slices = preprocess(scan.data, scan.affine, spec, provenance=provenance, overwrite_data=True)
    except ScanRejected as rejected:
        return ScanResult(payload.key, digest, reason=rejected.reason, detail=rejected.detail)
    except ValueError as err:  # preprocess refuses e.g. a volume whose foreground is constant
        return ScanResult(payload.key, digest, reason="preprocess_failed", detail=f"{payload.key}: {err}")
    except Exception as err:  # any other library failure still quarantines instead of crashing the job
        return ScanResult(
            payload.key, digest, reason="reader_error",
            detail=f"{payload.key}: unexpected {type(err).__name__} while reading: {err}; report it with the file",
        )
    if not slices:
        return ScanResult(
            payload.key, digest, reason="no_foreground_slices",
            detail=f"{payload.key} has no axial slice with at least {spec.min_foreground:.0%} foreground after preprocessing",
        )
    return ScanResult(payload.key, digest, volume=volume, slices=slices, metadata=scan.metadata)


def payload_key(payload: Any) -> str:
    return str(getattr(payload, "key", "<unknown>"))
