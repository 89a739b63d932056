"""Whole-file writes on a pyarrow filesystem, the same on S3 and local disk."""

from __future__ import annotations

import functools
import posixpath

import pyarrow.fs as pafs

from datastore.objectstore import ObjectStoreConfig
from datastore.retry import StoreUnavailable, body_errors, describe, retrying


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees part of it: on disk a temp file and rename;
    on S3 one PUT (``ObjectStoreConfig``'s filesystem delays the request to the close), or for an object
    above pyarrow's part size a multipart upload that S3 shows only once it is completed, which a failed
    upload never is (``abort_unfinished_uploads`` deletes what such an upload left).

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


def read_object(storage: ObjectStoreConfig, uri: str) -> bytes:
    """The bytes of ``uri`` (``s3://bucket/key`` or a local path) as stored (no decompression).

    On S3 botocore retries each GET under ``storage.retries``; a body cut short is fetched again, as a
    whole, under the same bounds. Raises ``StoreUnavailable`` naming ``uri`` once the retries are spent.
    """
    if not uri.startswith("s3://"):
        fs, path = storage.resolve(uri)
        with fs.open_input_stream(path, compression=None) as stream:
            return stream.read()
    import botocore.exceptions

    client = _client(storage)
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        return retrying(storage.retries, uri, lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
                        body_errors())
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as err:
        raise StoreUnavailable(f"{uri}: {describe(err)}") from err


@functools.cache
def _client(storage: ObjectStoreConfig):
    """One boto3 client per config and process (clients are thread-safe)."""
    return storage.boto3_client()


def ensure_parent(fs: pafs.FileSystem, path: str) -> None:
    """Create the parent folder of ``path`` on local disk (a no-op for object stores)."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)


def abort_unfinished_uploads(storage: ObjectStoreConfig, root: str) -> int:
    """Abort the multipart uploads left unfinished under ``s3://bucket/prefix`` ``root`` (their parts cost
    storage but no reader sees them); returns how many. Only for a root no one else is writing to."""
    if not root.startswith("s3://"):
        return 0
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    client = storage.boto3_client()
    aborted = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted


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
