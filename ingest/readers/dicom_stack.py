"""Single-frame DICOM slices -> a 3D volume: order along the slice normal, check geometry, build the affine.

DICOM patient coordinates are LPS; the returned affine is RAS. Array axis 0 follows the image rows'
direction (ImageOrientationPatient[:3], step PixelSpacing[1]), axis 1 the columns' direction
(ImageOrientationPatient[3:], step PixelSpacing[0]) and axis 2 the slice normal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom

from ingest.readers.decoding import check_dimensions
from ingest.readers.scan import ScanPolicy, ScanRejected, choose_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GEOMETRY_TOLERANCE = 1e-4
POSITION_DECIMALS = 3
SPACING_RELATIVE_TOLERANCE = 0.01


def stack_slices(
    key: str, series: list[tuple[str, pydicom.Dataset]], policy: ScanPolicy, metadata: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Volume (float32, rescaled) and RAS affine from one series of single-frame slices."""
    check_slices(key, series)
    first = series[0][1]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    ordered = order_along_normal(key, series, normal, policy, metadata)
    if len(ordered) < 2:
        raise ScanRejected(key, "not_3d", f"{key} holds a single slice; a scan must be a 3D volume")
    positions = np.array([ds.ImagePositionPatient for _, ds in ordered], dtype=np.float64)
    check_spacing(key, positions @ normal)
    pixel_spacing = [float(v) for v in first.PixelSpacing]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(ordered) - 1)
    lps[:3, 3] = positions[0]
    shape = (int(first.Columns), int(first.Rows), len(ordered))
    check_dimensions(key, shape, 4, policy.max_axis_length, policy.max_decoded_bytes)
    volume = np.empty(shape, dtype=np.float32)
    for index, (name, ds) in enumerate(ordered):
        volume[:, :, index] = rescaled_pixels(key, name, ds).T
    metadata["dicom_slices"] = len(ordered)
    return volume, LPS_TO_RAS @ lps


def check_slices(key: str, series: list[tuple[str, pydicom.Dataset]]) -> None:
    """Every slice has pixels and geometry, one grey channel, and the first slice's orientation, size and spacing."""
    first = series[0][1]
    for name, ds in series:
        if "PixelData" not in ds:
            raise ScanRejected(key, "dicom_no_pixels", f"{name} in {key} has no PixelData; it is not an image (a report or a structured document?)")
        missing = [tag for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if tag not in ds]
        if missing:
            raise ScanRejected(key, "no_geometry", f"{name} in {key} lacks {', '.join(missing)}; its position in the patient is unknown")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ScanRejected(key, "not_grayscale", f"{name} in {key} has {ds.SamplesPerPixel} samples per pixel; only greyscale images are read")
        differing = differing_geometry(first, ds)
        if differing:
            raise ScanRejected(
                key, "series_inconsistent",
                f"{key} mixes acquisitions: {'; '.join(differing)} ({series[0][0]} vs {name}); split the series",
            )


def differing_geometry(first: pydicom.Dataset, other: pydicom.Dataset) -> list[str]:
    """``field first vs other`` for each of orientation, matrix size and pixel spacing that differs."""
    def values(ds: pydicom.Dataset) -> dict[str, Any]:
        return {"orientation": [round(float(v), 4) for v in ds.ImageOrientationPatient],
                "matrix size": f"{ds.Rows}x{ds.Columns}",
                "pixel spacing": [round(float(v), 4) for v in ds.PixelSpacing]}

    mine, theirs = values(first), values(other)
    same = {"orientation": np.allclose(first.ImageOrientationPatient, other.ImageOrientationPatient, atol=GEOMETRY_TOLERANCE),
            "matrix size": (first.Rows, first.Columns) == (other.Rows, other.Columns),
            "pixel spacing": np.allclose(first.PixelSpacing, other.PixelSpacing, atol=GEOMETRY_TOLERANCE)}
    return [f"{field} {mine[field]} vs {theirs[field]}" for field, equal in same.items() if not equal]


def order_along_normal(
    key: str, series: list[tuple[str, pydicom.Dataset]], normal: np.ndarray, policy: ScanPolicy, metadata: dict[str, Any]
) -> list[tuple[str, pydicom.Dataset]]:
    """Slices sorted by position along the normal; repeated positions mean several volumes (4D policy)."""
    by_position: dict[float, list[tuple[str, pydicom.Dataset]]] = {}
    for name, ds in series:
        depth = round(float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)), POSITION_DECIMALS)
        by_position.setdefault(depth, []).append((name, ds))
    counts = {len(members) for members in by_position.values()}
    if len(counts) > 1:
        raise ScanRejected(
            key, "series_inconsistent",
            f"{key}: slice positions repeat unevenly ({sorted(counts)} files per position); the series is incomplete or mixed",
        )
    volumes = counts.pop()
    chosen = choose_volume(key, volumes, policy, metadata)

    def acquisition_order(item: tuple[str, pydicom.Dataset]) -> tuple[int, int, str]:
        ds = item[1]
        return int(ds.get("AcquisitionNumber", 0) or 0), int(ds.get("InstanceNumber", 0) or 0), item[0]

    return [sorted(by_position[depth], key=acquisition_order)[chosen] for depth in sorted(by_position)]


def check_spacing(key: str, depths: np.ndarray) -> None:
    """Slices must be evenly spaced; a step that is a multiple of the usual one means missing slices."""
    steps = np.diff(depths)
    usual = float(np.median(steps))
    tolerance = SPACING_RELATIVE_TOLERANCE * usual + GEOMETRY_TOLERANCE
    irregular = np.abs(steps - usual) > tolerance
    if not irregular.any():
        return
    multiples = steps[irregular] / usual
    if np.all(np.abs(multiples - np.round(multiples)) * usual <= tolerance) and np.all(np.round(multiples) >= 2):
        missing = int(np.sum(np.round(multiples) - 1))
        raise ScanRejected(
            key, "series_missing_slices",
            f"{key} has {missing} missing slice(s): gaps of {np.round(steps[irregular], 3).tolist()} mm where the "
            f"spacing is {usual:.3f} mm; re-export the complete series",
        )
    raise ScanRejected(
        key, "series_inconsistent",
        f"{key} has uneven slice spacing (steps {np.round(np.unique(np.round(steps, 3)), 3).tolist()} mm); "
        "the series is not one regular volume",
    )


def rescaled_pixels(key: str, name: str, ds: pydicom.Dataset) -> np.ndarray:
    """The slice's stored pixels times RescaleSlope plus RescaleIntercept, as float32."""
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises several types for undecodable transfer syntaxes
        raise ScanRejected(
            key, "dicom_undecodable",
            f"cannot decode the pixels of {name} in {key} ({err}); install the codec for its transfer syntax or re-export it uncompressed",
        ) from err
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
