"""The training stream through a misbehaving object store: Ray Data reads the shards with the store
config's pyarrow filesystem, which keeps its retry policy in the read tasks it is pickled to."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from datastore.retry import RetryConfig
from datastore.shards import Sample, SampleRecord, write_shard
from infra.local.faults import Fault

pytestmark = pytest.mark.timeout(300)


def test_the_filesystem_keeps_its_retry_policy_when_pickled(object_store):
    fs = object_store.s3_filesystem()
    rebuilt = pickle.loads(pickle.dumps(fs))
    assert rebuilt.config == object_store and rebuilt.config.retries == RetryConfig()


def test_shards_stream_whole_through_throttling_and_cut_downloads(object_store, bucket, ray_session, flaky_store):
    import ray.data

    fs = object_store.s3_filesystem()
    rng = np.random.default_rng(0)
    expected = {}
    paths = []
    for shard in range(6):
        samples = []
        for i in range(20):
            key = f"vol{shard}_z{i:03d}"
            image = rng.standard_normal((32, 32)).astype(np.float16)
            expected[key] = image
            samples.append(Sample(key, image, SampleRecord("d", "s", "", "T1w", f"vol{shard}", i, 0.5, [1.0] * 3)))
        paths.append(f"{bucket}/shards/{shard:02d}.tar")
        write_shard(fs, paths[-1], samples)

    store, proxy = flaky_store
    proxy.inject(Fault("reset", ["get"], key="shards/01.tar", count=1, cut_at=0.3),  # one cut download
                 Fault("reset", ["get"], key="shards/04.tar", count=2, cut_at=0.6),  # cut twice in a row
                 Fault("slow_down", ["get"], key="shards/02.tar", count=2),
                 Fault("slow_down", ["get", "head", "list"], rate=0.1, seed=1))
    rows = ray.data.read_webdataset(paths, filesystem=store.s3_filesystem()).take_all()
    proxy.clear()

    assert proxy.injected("reset", on="get") == 3 and proxy.injected("slow_down", on="get") >= 2
    assert sorted(row["__key__"] for row in rows) == sorted(expected)
    for row in rows:
        np.testing.assert_array_equal(row["npy"], expected[row["__key__"]])
