"""The training stream reads what the manifest says: its shards, minus samples of superseded scans."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.train.data import build_dataset, probe_set, shard_index

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_stream_follows_the_manifest_and_skips_superseded_samples(ingested, object_store, tiny_config, tmp_path):
    from datastore.shards import read_shard

    config = tiny_config(tmp_path, "data.augment_on=worker")  # the stream of whole slices
    index = shard_index(ingested, object_store)
    assert index.version == 1 and index.shards and all(s.endswith(".tar") for s in index.shards)
    assert {scan["sequence"] for scan in index.scans} == {"T1w", "T2w"}
    fs, _ = object_store.resolve(ingested)
    keys = [key for key, _, _ in read_shard(fs, index.shards[0])][:10]
    pretend = dataclasses.replace(index, inactive_keys=frozenset(keys))  # as after a re-ingest of changed scans
    images = np.concatenate([b["image"] for b in build_dataset(pretend, config, config.stage1).iter_batches(
        batch_size=64, batch_format="numpy")])
    assert len(images) == index.n_slices - 10 and images.dtype == np.float32 and images.shape[1:] == (96, 96)
    probe = probe_set(pretend, object_store, per_class=8)
    assert probe.classes() == ["T1w", "T2w"] and not set(probe.keys) & set(keys)
    assert probe.train.any() and (~probe.train).any()
