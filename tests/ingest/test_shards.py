"""WebDataset shards: float16 .npy + JSON samples that round-trip and that Ray's reader decodes as is."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from ingest.writers.shards import list_shards, npy_bytes, read_shard, sample_key, sample_stack, write_shard

@pytest.fixture(scope="module")
def real_slices(small_scan):
    return small_scan("icbm2009c_t1").slices


def samples(slices):
    return [(sample_key("vol-1", z), image, {"z": z, "foreground_fraction": fg}) for z, image, fg in slices]


def test_samples_round_trip_within_float16_precision(real_slices, object_store, bucket):
    fs, root = object_store.resolve(f"s3://{bucket}/shards")
    size = write_shard(fs, f"{root}/a.tar", samples(real_slices[:20]))
    back = list(read_shard(fs, f"{root}/a.tar"))

    assert [k for k, _, _ in back] == [sample_key("vol-1", z) for z, _, _ in real_slices[:20]]
    for (_, image, record), (z, original, _) in zip(back, real_slices[:20]):
        assert image.dtype == np.float16 and image.shape == (128, 128) and record["z"] == z
        np.testing.assert_allclose(image.astype(np.float32), original, rtol=2**-10, atol=1e-3)
    per_slice = size / 20
    assert 2 * 128 * 128 < per_slice < 2 * 128 * 128 + 3072  # float16 pixels; npy, tar and JSON overhead ~2.5 KiB


def test_the_fast_encoders_write_what_numpy_writes(real_slices):
    images = [image for _, image, _ in real_slices[:8]]
    stack = sample_stack(images)
    assert stack.dtype == np.float16 and stack.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(stack, np.stack(images).astype(np.float16))  # same rounding as numpy's cast
    buffer = io.BytesIO()
    np.save(buffer, stack[0])
    assert npy_bytes(images[0]) == npy_bytes(stack[0]) == buffer.getvalue()


def test_member_names_are_key_dot_extension(real_slices, tmp_path):
    from ingest.storage import ObjectStoreConfig

    fs, root = ObjectStoreConfig().resolve(str(tmp_path))
    write_shard(fs, f"{root}/run/b.tar", samples(real_slices[:2]))
    with tarfile.open(tmp_path / "run" / "b.tar") as tar:
        assert tar.getnames() == [f"vol-1_z{real_slices[0][0]:03d}.npy", f"vol-1_z{real_slices[0][0]:03d}.json",
                                  f"vol-1_z{real_slices[1][0]:03d}.npy", f"vol-1_z{real_slices[1][0]:03d}.json"]


def test_listings_keep_only_tar_files(object_store, bucket, real_slices):
    client = object_store.boto3_client()
    client.put_object(Bucket=bucket, Key="shards/run/", Body=b"")  # a folder marker (platform note F9)
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
    first = next(r for r in rows if r["__key__"] == sample_key("vol-1", real_slices[0][0]))
    np.testing.assert_allclose(np.asarray(first["npy"], dtype=np.float32), real_slices[0][1], atol=1e-3)
    assert first["json"]["z"] == real_slices[0][0]
