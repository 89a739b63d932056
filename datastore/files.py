"""Whole-file writes on a pyarrow filesystem, the same on S3 and local disk."""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` in one step: a single PUT on S3, a temp file and rename on disk.

    S3 needs no folders (creating one would leave a zero-byte marker object); local disk does.
    """
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    ensure_parent(fs, path)
    temp = f"{path}.tmp"
    with fs.open_output_stream(temp) as out:
        out.write(data)
    fs.move(temp, path)


def ensure_parent(fs: pafs.FileSystem, path: str) -> None:
    """Create the parent folder of ``path`` on local disk (a no-op for object stores)."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)
