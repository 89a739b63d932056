"""FreeSurfer MGH / MGZ from bytes."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np

from ingest.readers.decoding import check_dimensions, read_bounded
from ingest.readers.scan import RawScan, ScanPolicy, ScanRejected, keep_3d

MGH_HEADER_BYTES = 284
MGH_BYTES_PER_VOXEL = {0: 1, 1: 4, 3: 4, 4: 2}  # uchar, int32, float32, short


def read_mgh(key: str, raw: bytes, policy: ScanPolicy) -> RawScan:
    """Decode an MGH/MGZ volume; its vox2ras affine is already in RAS mm."""

    def expected_size(head: bytes) -> int:
        version, width, height, depth, frames, dtype_code = struct.unpack_from(">6i", head, 0)
        if version != 1 or dtype_code not in MGH_BYTES_PER_VOXEL:
            raise ScanRejected(key, "bad_magic", f"{key} is not an MGH volume (version {version}, type {dtype_code}); check the file format")
        shape = (width, height, depth, frames)
        voxels = check_dimensions(key, shape, MGH_BYTES_PER_VOXEL[dtype_code], policy.max_axis_length, policy.max_decoded_bytes)
        return MGH_HEADER_BYTES + voxels

    # MGH may carry optional footer tags after the voxels; only the voxels are needed.
    decoded = read_bounded(raw, key, MGH_HEADER_BYTES, expected_size, trailing_ok=True)
    img = nib.MGHImage.from_bytes(decoded)
    metadata = {"stored_dtype": str(img.header.get_data_dtype())}
    data = keep_3d(img.dataobj, key, policy, metadata)
    return RawScan(np.asarray(data, dtype=np.float32), np.asarray(img.affine, dtype=np.float64), "mgh", metadata)
