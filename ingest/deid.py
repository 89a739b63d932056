"""De-identification: keyed pseudonyms for subject identifiers and the DICOM metadata allow-list.

Pseudonyms are HMAC-SHA256 of the identifier under a secret key, so they are stable across runs and
sites that share the key, and cannot be reversed or recomputed by anyone without it. The key comes
from the environment variable ``BRAINDINO_PSEUDONYM_KEY``. When it is unset, a fixed, public dev key
is used only if ``BRAINDINO_ENV=dev`` (demos and tests); otherwise ``PseudonymKeyMissing`` is raised,
so a production run can never silently produce guessable pseudonyms.

Metadata policy: only the structured acquisition fields in ``DICOM_ALLOWED_KEYWORDS`` ever leave a
reader. Free text (descriptions, protocol names, comments), dates, names, IDs, institutions, devices'
serial numbers and demographics (age, sex, weight) are never copied.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

KEY_VARIABLE = "BRAINDINO_PSEUDONYM_KEY"
ENV_VARIABLE = "BRAINDINO_ENV"
DEV_KEY = b"braindino-dev-only-pseudonym-key"
PSEUDONYM_HEX_CHARS = 16

DICOM_ALLOWED_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "EchoTrainLength",
    "PixelBandwidth",
    "ImagingFrequency",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ContrastBolusAgent",
)


class PseudonymKeyMissing(RuntimeError):
    """No pseudonym key configured outside a dev environment."""


def pseudonym_key() -> bytes:
    """The configured HMAC key: ``$BRAINDINO_PSEUDONYM_KEY``, or the dev key when ``BRAINDINO_ENV=dev``."""
    configured = os.environ.get(KEY_VARIABLE)
    if configured:
        return configured.encode()
    if os.environ.get(ENV_VARIABLE) == "dev":
        return DEV_KEY
    raise PseudonymKeyMissing(
        f"{KEY_VARIABLE} is not set. Set it to the project's secret pseudonym key "
        f"(or set {ENV_VARIABLE}=dev to use the public dev key for demos and tests)"
    )


def pseudonym(identifier: str, secret: bytes | None = None) -> str:
    """A stable 16-hex-character pseudonym for ``identifier`` under ``secret`` (default: ``pseudonym_key()``)."""
    key = pseudonym_key() if secret is None else secret
    if not key:
        raise PseudonymKeyMissing("pseudonym secret is empty")
    return hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def allowed_dicom_metadata(dataset: Any) -> dict[str, Any]:
    """The allow-listed fields present in a pydicom dataset, as JSON-safe values."""
    metadata: dict[str, Any] = {}
    for keyword in DICOM_ALLOWED_KEYWORDS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        metadata[keyword] = json_safe(value)
    return metadata


def json_safe(value: Any) -> Any:
    """pydicom values (MultiValue, DSfloat, IS, str subclasses) as plain floats, ints, strings or lists."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)
