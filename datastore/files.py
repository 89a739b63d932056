"""Whole-file writes on a pyarrow filesystem, the same on S3 and local disk."""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from datastore.objectstore import ObjectStoreConfig


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


def delete_folder(fs: pafs.FileSystem, path: str, storage: ObjectStoreConfig) -> None:
    """Delete the folder ``path`` and everything under it.

    On S3 the objects under the prefix are deleted through boto3: pyarrow's deletions leave the parent
    behind as a zero-byte ``parent/`` folder-marker object.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        fs.delete_dir(path)
        return
    bucket, _, prefix = path.partition("/")
    client = storage.boto3_client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix.rstrip('/')}/"):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
