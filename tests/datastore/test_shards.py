"""WebDataset shards: float16 .npy + JSON samples that round-trip and that Ray's reader decodes as is."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from datastore.objectstore import ObjectStoreConfig
from datastore.shards import (SAMPLE_FORMAT_VERSION, Sample, SampleRecord, list_shards, npy_bytes, read_shard,
                              sample_key, sample_stack, write_shard)


@pytest.fixture(scope="module")
def real_slices(preprocessed):
    return preprocessed("icbm2009c_t1")[1]


def record(z: int, fraction: float) -> SampleRecord:
    return SampleRecord(dataset="icbm152", subject="p1", session="", sequence="T1w", volume_id="vol-1", z=z,
                        foreground_fraction=fraction, spacing=[2.0, 2.0, 2.0])


def samples(slices) -> list[Sample]:
    return [Sample(sample_key("vol-1", s.z), s.image, record(s.z, s.foreground_fraction)) for s in slices]


def test_samples_round_trip_within_float16_precision(real_slices, object_store, bucket):
    fs, root = object_store.resolve(f"s3://{bucket}/shards")
    size = write_shard(fs, f"{root}/a.tar", samples(real_slices[:20]))
    back = list(read_shard(fs, f"{root}/a.tar"))

    assert [k for k, _, _ in back] == [sample_key("vol-1", z) for z, _, _ in real_slices[:20]]
    for (_, image, stored), (z, original, fraction) in zip(back, real_slices[:20]):
        assert image.dtype == np.float16 and image.shape == (128, 128) and stored == record(z, fraction)
        np.testing.assert_allclose(image.astype(np.float32), original, rtol=2**-10, atol=1e-3)
    per_slice = size / 20
    assert 2 * 128 * 128 < per_slice < 2 * 128 * 128 + 3072  # float16 pixels; npy, tar and JSON overhead ~2.5 KiB


def test_the_record_is_plain_json_with_its_format_version_and_refuses_another():
    stored = json.loads(record(40, 0.25).to_json())
    assert stored == {"format": SAMPLE_FORMAT_VERSION, "dataset": "icbm152", "subject": "p1", "session": "",
                      "sequence": "T1w", "volume_id": "vol-1", "z": 40, "foreground_fraction": 0.25,
                      "spacing": [2.0, 2.0, 2.0]}
    assert SampleRecord.from_json(record(40, 0.25).to_json()) == record(40, 0.25)
    with pytest.raises(ValueError, match="format 2 is not supported"):
        SampleRecord.from_json(json.dumps({**stored, "format": 2}))
    with pytest.raises(ValueError, match="has keys"):
        SampleRecord.from_json(json.dumps({**stored, "patient_name": "x"}))


def test_the_fast_encoders_write_what_numpy_writes(real_slices):
    images = [s.image for s in real_slices[:8]]
    stack = sample_stack(images)
    assert stack.dtype == np.float16 and stack.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(stack, np.stack(images).astype(np.float16))  # same rounding as numpy's cast
    buffer = io.BytesIO()
    np.save(buffer, stack[0])
    assert npy_bytes(images[0]) == npy_bytes(stack[0]) == buffer.getvalue()


def test_member_names_are_key_dot_extension(real_slices, tmp_path):
    fs, root = ObjectStoreConfig().resolve(str(tmp_path))
    write_shard(fs, f"{root}/run/b.tar", samples(real_slices[:2]))
    with tarfile.open(tmp_path / "run" / "b.tar") as tar:
        assert tar.getnames() == [f"vol-1_z{real_slices[0].z:03d}.npy", f"vol-1_z{real_slices[0].z:03d}.json",
                                  f"vol-1_z{real_slices[1].z:03d}.npy", f"vol-1_z{real_slices[1].z:03d}.json"]


def test_listings_keep_only_tar_files(object_store, bucket, real_slices):
    client = object_store.boto3_client()
    client.put_object(Bucket=bucket, Key="shards/run/", Body=b"")  # a folder marker, as S3 writers may leave
    client.put_object(Bucket=bucket, Key="shards/run/notes.txt", Body=b"x")
    fs, root = object_store.resolve(f"s3://{bucket}/shards")
    write_shard(fs, f"{root}/run/c.tar", samples(real_slices[:1]))
    assert list_shards(fs, root) == [f"{root}/run/c.tar"]


def test_ray_read_webdataset_decodes_the_samples(ray_session, real_slices, object_store, bucket):
    import ray

    fs, root = object_store.resolve(f"s3://{bucket}/shards")
    write_shard(fs, f"{root}/d.tar", samples(real_slices[:8]))
    rows = ray.data.read_webdataset(list_shards(fs, root), filesystem=fs).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(sample_key("vol-1", z) for z, _, _ in real_slices[:8])
    first = next(r for r in rows if r["__key__"] == sample_key("vol-1", real_slices[0].z))
    np.testing.assert_allclose(np.asarray(first["npy"], dtype=np.float32), real_slices[0].image, atol=1e-3)
    assert first["json"]["z"] == real_slices[0].z
