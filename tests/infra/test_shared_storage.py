"""Which paths count as storage every node sees, and that one node may use its own folders."""

import pytest

from pipelines.shared_storage import is_shared, require_shared_storage


@pytest.mark.parametrize("uri, shared", [("s3://bucket/ckpt", True), ("gs://bucket/x", True), ("/data/ckpt", False),
                                         (".local/ray_results", False), ("file:///data/ckpt", False), ("", False)])
def test_object_storage_is_shared_and_folders_are_not(uri, shared):
    assert is_shared(uri) is shared


def test_a_single_node_may_use_its_own_folders(ray_session, tmp_path):
    require_shared_storage({"checkpoint.storage_path": str(tmp_path), "data.manifest": "s3://bucket/ingest"})
