"""What a reader takes (``ScanPayload``), what it returns (``RawScan``) and how it refuses (``ScanRejected``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

FourDPolicy = Literal["first", "refuse"]


@dataclass(frozen=True)
class ScanPayload:
    """One scan unit as fetched from storage: one file, or the files of one DICOM folder, by name."""

    key: str
    files: dict[str, bytes]


@dataclass(frozen=True)
class ScanPolicy:
    """The rules a scan must meet before it is accepted."""

    four_d: FourDPolicy = "first"
    max_decoded_bytes: int = 2 * 1024**3
    max_axis_length: int = 4096
    max_files: int = 4096


@dataclass(frozen=True)
class RawScan:
    """A decoded 3D scan: voxels (scaled to physical values) and their voxel -> RAS mm affine.

    ``metadata`` holds only allow-listed, non-identifying acquisition fields. ``header_affines`` holds
    alternative geometries stored in the file (NIfTI ``qform``/``sform`` when both are set) for validation.
    """

    data: np.ndarray
    affine: np.ndarray
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    header_affines: dict[str, np.ndarray] = field(default_factory=dict)


class ScanRejected(Exception):
    """A scan that cannot be accepted. ``reason`` is a short stable code; ``detail`` says what and what to do."""

    def __init__(self, key: str, reason: str, detail: str) -> None:
        super().__init__(f"{key}: {reason}: {detail}")
        self.key = key
        self.reason = reason
        self.detail = detail


def choose_volume(key: str, volumes: int, policy: ScanPolicy, metadata: dict[str, Any], shape: tuple[int, ...] = ()) -> int:
    """Apply the 4D policy to a scan holding ``volumes`` 3D volumes; return the index to keep."""
    if volumes == 1:
        return 0
    if policy.four_d == "refuse":
        raise ScanRejected(
            key, "unsupported_4d",
            f"{key} holds {volumes} volumes{f' (shape {shape})' if shape else ''} and the policy refuses 4D; "
            "split it into 3D scans or ingest with four_d='first'",
        )
    metadata["four_d_policy"] = "first"
    metadata["volumes_in_scan"] = int(volumes)
    return 0


def keep_3d(data: np.ndarray, key: str, policy: ScanPolicy, metadata: dict[str, Any]) -> np.ndarray:
    """Drop trailing singleton axes, then apply the 4D policy; refuse anything that is not 3D.

    ``data`` may be a lazy array proxy: only the chosen volume is read.
    """
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        data = data[..., choose_volume(key, data.shape[3], policy, metadata, tuple(data.shape))]
    if data.ndim != 3 or min(data.shape) < 2:
        raise ScanRejected(
            key, "not_3d",
            f"{key} has shape {tuple(data.shape)}; a scan must be a 3D volume with at least 2 voxels per axis",
        )
    return data
