"""Checks on a decoded scan before it is canonicalised; each failure raises ``ScanRejected`` with its code.

Order matters where one fault implies another: a sheared affine is reported as ``sheared_affine``
before qform/sform are compared (a qform cannot store shear, so they always disagree then).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.readers.scan import RawScan, ScanRejected

# |det| of the voxel axes relative to the product of their lengths: 1 for orthogonal axes, 0 when they are
# linearly dependent (a zero column, or two parallel axes).
SINGULAR_DETERMINANT = 1e-6


@dataclass(frozen=True)
class ValidationLimits:
    """Tolerances and plausible ranges for the geometry checks."""

    shear_cosine: float = 1e-3
    qform_sform_rotation: float = 1e-3
    qform_sform_translation_mm: float = 0.5
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 20.0


def validate(key: str, scan: RawScan, limits: ValidationLimits = ValidationLimits()) -> None:
    """Raise ``ScanRejected`` for the first failing check; return None for an acceptable scan."""
    check_shape(key, scan.data)
    check_voxels(key, scan.data)
    check_affine(key, scan.affine, limits)
    check_header_affines(key, scan, limits)


def check_shape(key: str, data: np.ndarray) -> None:
    if data.ndim != 3 or min(data.shape) < 2:
        raise ScanRejected(key, "not_3d", f"{key} has shape {data.shape}; a scan must be 3D with at least 2 voxels per axis")


def check_voxels(key: str, data: np.ndarray) -> None:
    low, high = float(np.min(data)), float(np.max(data))
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ScanRejected(key, "non_finite", f"{key} has {bad} NaN or infinite voxels; fix or re-export the file")
    if low == high:
        raise ScanRejected(key, "constant_volume", f"every voxel of {key} equals {low}; the scan is blank")


def check_affine(key: str, affine: np.ndarray, limits: ValidationLimits) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ScanRejected(key, "bad_affine", f"{key} has a non-finite or malformed affine; its geometry is unusable")
    axes = affine[:3, :3]
    spacing = np.sqrt((axes**2).sum(axis=0))
    if np.any(spacing == 0) or abs(np.linalg.det(axes)) <= SINGULAR_DETERMINANT * float(np.prod(spacing)):
        raise ScanRejected(
            key, "singular_affine",
            f"{key} has a singular affine (axis lengths {np.round(spacing, 4).tolist()} mm, determinant "
            f"{np.linalg.det(axes):.3g}): its voxel axes do not span 3D space; the header's qform/sform is "
            "unset or broken, re-export the scan with its geometry",
        )
    if np.any(spacing < limits.min_spacing_mm) or np.any(spacing > limits.max_spacing_mm):
        raise ScanRejected(
            key, "implausible_spacing",
            f"{key} has voxel spacing {np.round(spacing, 4).tolist()} mm, outside "
            f"[{limits.min_spacing_mm}, {limits.max_spacing_mm}] mm; check the header's units and pixdim",
        )
    unit = axes / spacing
    cosines = unit.T @ unit - np.eye(3)
    if np.max(np.abs(cosines)) > limits.shear_cosine:
        raise ScanRejected(
            key, "sheared_affine",
            f"{key} has a sheared affine (axis cosines up to {np.max(np.abs(cosines)):.4f}); "
            "resample it onto an orthogonal grid before ingest",
        )


def check_header_affines(key: str, scan: RawScan, limits: ValidationLimits) -> None:
    stored = scan.header_affines
    if "qform" not in stored or "sform" not in stored:
        return
    qform, sform = stored["qform"], stored["sform"]
    rotation_gap = float(np.max(np.abs(qform[:3, :3] - sform[:3, :3])))
    translation_gap = float(np.max(np.abs(qform[:3, 3] - sform[:3, 3])))
    if rotation_gap > limits.qform_sform_rotation or translation_gap > limits.qform_sform_translation_mm:
        raise ScanRejected(
            key, "qform_sform_mismatch",
            f"{key} sets qform and sform to different geometries (up to {rotation_gap:.4f} in the axes, "
            f"{translation_gap:.2f} mm in the origin); re-save it with one consistent geometry",
        )
