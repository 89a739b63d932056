"""NIfTI-1 and NIfTI-2 (.nii, .nii.gz) from bytes, with the header checked before any voxel is read."""

from __future__ import annotations

import struct
from typing import Any

import nibabel as nib
import numpy as np

from ingest.readers.decoding import check_dimensions, read_bounded
from ingest.readers.scan import RawScan, ScanPolicy, ScanRejected, keep_3d

NIFTI1_MAGIC = b"n+1\x00"
NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"
HEADER_PROBE = 348  # enough for every field we need in both versions


def read_nifti(key: str, raw: bytes, policy: ScanPolicy) -> RawScan:
    """Decode a single-file NIfTI; scl_slope/scl_inter are applied, free-text header fields are dropped."""
    version: list[int] = []

    def expected_size(head: bytes) -> int:
        layout = parse_layout(key, head)
        version.append(layout["version"])
        ndim = layout["dim"][0]
        if not 1 <= ndim <= 7:
            raise ScanRejected(key, "absurd_dimensions", f"{key} declares {ndim} dimensions; NIfTI allows 1..7. The header is corrupt")
        if layout["bitpix"] <= 0 or layout["bitpix"] % 8:
            raise ScanRejected(key, "unsupported_datatype", f"{key} has bitpix {layout['bitpix']}; only whole-byte voxel types are read")
        shape = tuple(int(n) for n in layout["dim"][1 : ndim + 1])
        voxels = check_dimensions(key, shape, layout["bitpix"] // 8, policy.max_axis_length, policy.max_decoded_bytes)
        return int(layout["vox_offset"]) + voxels

    decoded = read_bounded(raw, key, HEADER_PROBE, expected_size)
    image_class = nib.Nifti1Image if version[0] == 1 else nib.Nifti2Image
    try:
        img = image_class.from_bytes(decoded)
    except Exception as err:  # nibabel raises several types for malformed headers
        raise ScanRejected(key, "bad_header", f"{key}: nibabel cannot parse the NIfTI header ({err}); re-export the file") from err
    header = img.header
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if qform_code == 0 and sform_code == 0:
        raise ScanRejected(
            key, "no_geometry",
            f"{key} sets neither qform nor sform, so its orientation is unknown; re-export it from the scanner data with geometry",
        )
    metadata: dict[str, Any] = {
        "nifti_version": version[0],
        "stored_dtype": str(header.get_data_dtype()),
        "qform_code": qform_code,
        "sform_code": sform_code,
        "spatial_unit": header.get_xyzt_units()[0],
    }
    header_affines = {}
    if qform_code > 0 and sform_code > 0:
        header_affines = {"qform": header.get_qform(), "sform": header.get_sform()}
    data = keep_3d(img.dataobj, key, policy, metadata)
    return RawScan(
        data=float32_voxels(data) if data is img.dataobj else np.asarray(data, dtype=np.float32),
        affine=np.asarray(img.affine, dtype=np.float64),
        format=f"nifti{version[0]}",
        metadata=metadata,
        header_affines=header_affines,
    )


def float32_voxels(proxy) -> np.ndarray:
    """A whole 3D proxy's voxels with scl_slope/scl_inter applied in one float32 pass (plus one for an
    intercept); nibabel would scale through float64 and then cast."""
    raw = proxy.get_unscaled()
    voxels = np.empty(raw.shape, dtype=np.float32, order="F" if raw.flags.f_contiguous else "C")
    np.multiply(raw, np.float32(proxy.slope), out=voxels, casting="unsafe")
    if proxy.inter:
        voxels += np.float32(proxy.inter)
    return voxels


def parse_layout(key: str, head: bytes) -> dict[str, Any]:
    """Read version, dim, bitpix and vox_offset from the first bytes of a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>":
        sizeof_hdr = struct.unpack_from(endian + "i", head, 0)[0]
        if sizeof_hdr == 348:
            if head[344:348] != NIFTI1_MAGIC:
                raise bad_magic(key, head[344:348])
            return {
                "version": 1,
                "dim": struct.unpack_from(endian + "8h", head, 40),
                "bitpix": struct.unpack_from(endian + "h", head, 72)[0],
                "vox_offset": struct.unpack_from(endian + "f", head, 108)[0],
            }
        if sizeof_hdr == 540:
            if head[4:12] != NIFTI2_MAGIC:
                raise bad_magic(key, head[4:12])
            return {
                "version": 2,
                "dim": struct.unpack_from(endian + "8q", head, 16),
                "bitpix": struct.unpack_from(endian + "h", head, 14)[0],
                "vox_offset": struct.unpack_from(endian + "q", head, 168)[0],
            }
    raise ScanRejected(
        key, "bad_magic",
        f"{key} does not start with a NIfTI header (sizeof_hdr is neither 348 nor 540); check that it is a .nii file",
    )


def bad_magic(key: str, found: bytes) -> ScanRejected:
    return ScanRejected(
        key, "bad_magic",
        f"{key} has NIfTI magic {found!r}, not a single-file NIfTI ('n+1' or 'n+2'); "
        "convert .hdr/.img pairs or damaged files to .nii first",
    )
