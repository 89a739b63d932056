"""Unpacking a .zip of DICOM files, bounded so that a zip bomb is refused before it is inflated."""

from __future__ import annotations

import io
import zipfile

from ingest.readers.scan import ScanPolicy, ScanRejected

ZIP_MAGIC = b"PK\x03\x04"


def unzip_files(key: str, raw: bytes, policy: ScanPolicy) -> dict[str, bytes]:
    """The regular files inside a zip archive (directories and macOS resource forks skipped)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as err:
        raise ScanRejected(key, "bad_magic", f"{key} is not a readable zip archive ({err}); re-create the archive") from err
    members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    if len(members) > policy.max_files:
        raise ScanRejected(key, "too_many_files", f"{key} holds {len(members)} files, above the {policy.max_files}-file limit of ScanPolicy.max_files")
    declared = sum(m.file_size for m in members)
    if declared > policy.max_decoded_bytes:
        raise ScanRejected(
            key, "absurd_dimensions",
            f"{key} would inflate to {declared} bytes, above the {policy.max_decoded_bytes}-byte limit; "
            "raise ScanPolicy.max_decoded_bytes if the archive is genuine",
        )
    try:
        return {m.filename: archive.read(m) for m in members}
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise ScanRejected(key, "corrupt_archive", f"{key}: a member of the zip archive is damaged ({err}); re-create the archive") from err
