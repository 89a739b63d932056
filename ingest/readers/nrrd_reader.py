"""NRRD (.nrrd with attached data) from bytes; LPS and RAS world spaces become a RAS affine."""

from __future__ import annotations

import io

import nrrd
import numpy as np

from ingest.readers.decoding import check_dimensions
from ingest.readers.scan import RawScan, ScanPolicy, ScanRejected, keep_3d

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACE_TO_RAS = {
    "left-posterior-superior": LPS_TO_RAS,
    "lps": LPS_TO_RAS,
    "right-anterior-superior": np.eye(4),
    "ras": np.eye(4),
}
NRRD_TYPE_BYTES = {
    **dict.fromkeys(["signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"], 1),
    **dict.fromkeys(["short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"], 2),
    **dict.fromkeys(["int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"], 4),
    **dict.fromkeys(["longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"], 8),
}


def read_nrrd(key: str, raw: bytes, policy: ScanPolicy) -> RawScan:
    """Decode an NRRD whose first three axes are spatial; extra (e.g. time) axes go through the 4D policy."""
    if not raw.startswith(b"NRRD"):
        raise ScanRejected(key, "bad_magic", f"{key} does not start with 'NRRD'; check that it is an NRRD file")
    stream = io.BytesIO(raw)
    try:
        header = nrrd.read_header(stream)
    except Exception as err:  # pynrrd raises NRRDError and ValueError for malformed headers
        raise ScanRejected(key, "bad_header", f"{key}: cannot parse the NRRD header ({err}); re-export the file") from err
    if "data file" in header or "datafile" in header:
        raise ScanRejected(key, "unsupported_nrrd", f"{key} keeps its voxels in a detached data file; re-save it as a single .nrrd")
    space = str(header.get("space", "")).lower()
    if space not in SPACE_TO_RAS or "space directions" not in header:
        raise ScanRejected(
            key, "no_geometry",
            f"{key} has space {space or 'unset'!r}; only LPS or RAS spaces with 'space directions' carry a usable orientation",
        )
    shape = tuple(int(n) for n in header["sizes"])
    voxel_type = str(header.get("type", "")).lower()
    if voxel_type not in NRRD_TYPE_BYTES:
        raise ScanRejected(key, "unsupported_datatype", f"{key} has NRRD type {voxel_type!r}; only integer and float voxels are read")
    check_dimensions(key, shape, NRRD_TYPE_BYTES[voxel_type], policy.max_axis_length, policy.max_decoded_bytes)
    directions = np.asarray(header["space directions"], dtype=np.float64)
    spatial_axes = [i for i, row in enumerate(directions) if np.all(np.isfinite(row))]
    if spatial_axes != [0, 1, 2]:
        raise ScanRejected(key, "not_3d", f"{key} has spatial axes {spatial_axes}; the first three NRRD axes must be spatial")
    try:
        data = nrrd.read_data(header, stream, index_order="F")
    except Exception as err:
        raise ScanRejected(key, "size_mismatch", f"{key}: the NRRD voxel data does not match its header ({err})") from err
    world = np.eye(4)
    world[:3, :3] = directions[:3].T
    world[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    metadata = {"nrrd_space": space, "stored_dtype": str(data.dtype)}
    volume = keep_3d(data, key, policy, metadata)
    return RawScan(np.asarray(volume, dtype=np.float32), SPACE_TO_RAS[space] @ world, "nrrd", metadata)
