"""One config, every client: pyarrow, boto3, s3fs and zarr built from ``ObjectStoreConfig`` see one store."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.fs as pafs
import pytest
import zarr

from datastore.objectstore import ObjectStoreConfig


@pytest.mark.parametrize("credentials", ["named in the config", "from the environment"])
def test_every_client_reads_what_the_others_wrote(object_store, bucket, credentials):
    store = object_store if credentials == "named in the config" else replace(object_store, access_key=None, secret_key=None)
    store.boto3_client().put_object(Bucket=bucket, Key="raw/a/scan.nii", Body=b"\x5c\x01\x00\x00payload")

    fs, root = store.resolve(f"s3://{bucket}/raw/")
    assert isinstance(fs, pafs.S3FileSystem) and root == f"{bucket}/raw"
    listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    assert [(info.path, info.size) for info in listed if info.is_file] == [(f"{bucket}/raw/a/scan.nii", 11)]
    with fs.open_output_stream(f"{root}/b.bin") as out:
        out.write(b"written by pyarrow")
    assert store.fsspec_filesystem().cat(f"{bucket}/raw/b.bin") == b"written by pyarrow"

    group = zarr.open_group(store=store.zarr_store(f"s3://{bucket}/volumes"), mode="w")
    group.create_array("v", shape=(4, 3), dtype="float32")[...] = np.arange(12, dtype=np.float32).reshape(4, 3)
    keys = {item["Key"] for item in store.boto3_client().list_objects_v2(Bucket=bucket, Prefix="volumes/")["Contents"]}
    assert {"volumes/zarr.json", "volumes/v/zarr.json"} <= keys
    reread = zarr.open_group(store=store.zarr_store(f"s3://{bucket}/volumes", read_only=True), mode="r")
    np.testing.assert_array_equal(reread["v"][...], np.arange(12, dtype=np.float32).reshape(4, 3))


def test_local_paths_resolve_to_local_disk_and_other_schemes_are_refused(tmp_path):
    fs, path = ObjectStoreConfig().resolve(f"file://{tmp_path}/out")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "out")
    assert ObjectStoreConfig().resolve("relative/out")[1].endswith("/relative/out")
    with pytest.raises(ValueError, match="unsupported storage URI 'gs://b/x'"):
        ObjectStoreConfig().resolve("gs://b/x")


def test_credentials_never_show_in_a_printed_config():
    store = ObjectStoreConfig(endpoint_url="http://127.0.0.1:9000", access_key="AKIA-EXAMPLE", secret_key="s3cr3t")
    assert "AKIA-EXAMPLE" not in repr(store) and "s3cr3t" not in repr(store)
    assert store.has_keys and not ObjectStoreConfig(access_key="only-one").has_keys
