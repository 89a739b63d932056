"""Size-bounded decoding of single-file formats: gzip is inflated only as far as the header allows."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from ingest.readers.scan import ScanRejected

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(raw: bytes) -> bool:
    return raw[:2] == GZIP_MAGIC


def read_bounded(
    raw: bytes, key: str, header_size: int, expected_size: Callable[[bytes], int], trailing_ok: bool = False
) -> bytes:
    """Return the (gunzipped if needed) file bytes after checking their length against the header.

    ``expected_size(header)`` parses the first ``header_size`` bytes, checks the dimensions against the
    policy (raising ``ScanRejected``) and returns the exact file length the header implies. Compressed
    input is inflated only up to that length, so a lying header cannot make us allocate more.
    With ``trailing_ok`` (formats with optional footers) bytes past that length are ignored, not refused.
    """
    if not is_gzip(raw):
        if len(raw) < header_size:
            raise ScanRejected(key, "size_mismatch", f"{key} is {len(raw)} bytes, shorter than its {header_size}-byte header")
        expected = expected_size(raw[:header_size])
        if trailing_ok and len(raw) > expected:
            return raw[:expected]
        check_length(key, len(raw), expected)
        return raw
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        head = inflater.decompress(raw, header_size)
        if len(head) < header_size:
            raise ScanRejected(key, "truncated_gzip", f"{key} ends inside its header after gunzip ({len(head)} bytes); re-upload the complete file")
        expected = expected_size(head)
        body = inflater.decompress(inflater.unconsumed_tail, expected - header_size + 1)
        if trailing_ok and len(head) + len(body) >= expected:
            return (head + body)[:expected]
        overflow = inflater.decompress(inflater.unconsumed_tail, 1) if len(head) + len(body) == expected else b""
    except zlib.error as err:
        raise ScanRejected(key, "corrupt_gzip", f"{key} is not a valid gzip stream ({err}); re-export or re-upload it") from err
    decoded = len(head) + len(body) + len(overflow)
    if decoded > expected:
        check_length(key, decoded, expected)
    if not inflater.eof:
        raise ScanRejected(key, "truncated_gzip", f"{key} is a truncated gzip stream (inflated {decoded} of {expected} bytes); re-upload the complete file")
    check_length(key, decoded, expected)
    return head + body


def check_length(key: str, actual: int, expected: int) -> None:
    if actual != expected:
        raise ScanRejected(
            key, "size_mismatch",
            f"{key} holds {actual} bytes but its header implies {expected}; the file is truncated or its header is wrong",
        )


def check_dimensions(key: str, shape: tuple[int, ...], bytes_per_voxel: int, max_axis: int, max_bytes: int) -> int:
    """Refuse non-positive, huge or over-budget dimensions; return the voxel data size in bytes."""
    if not shape or any(n <= 0 for n in shape) or max(shape) > max_axis:
        raise ScanRejected(
            key, "absurd_dimensions",
            f"{key} declares dimensions {shape}; each must lie in 1..{max_axis}. The header is corrupt",
        )
    size = bytes_per_voxel
    for n in shape:
        size *= n
    if size > max_bytes:
        raise ScanRejected(
            key, "absurd_dimensions",
            f"{key} declares {size} bytes of voxels (shape {shape}), above the {max_bytes}-byte limit; "
            "raise ScanPolicy.max_decoded_bytes if this scan is genuine",
        )
    return size
