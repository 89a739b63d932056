"""zarr volumes: one group per dataset, one array per scan, one chunk per axial slice, geometry in attrs."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from datastore.objectstore import ObjectStoreConfig
from datastore.volumes import open_root, prepare_root, read_axial_slice, write_volume

@pytest.fixture(scope="module")
def t2_volume(preprocessed):
    return preprocessed("icbm2009c_t2")[0]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_slice_reads_back_exactly_from_its_own_chunk(where, t2_volume, tmp_path, object_store, bucket):
    output, storage = (str(tmp_path), ObjectStoreConfig()) if where == "local" else (f"s3://{bucket}/out", object_store)
    prepare_root(output, storage, ["icbm152"])
    path = write_volume(open_root(output, storage, mode="r+"), "icbm152", "abc-123", t2_volume, {"sequence": "T2w", "subject": "p1"})
    assert path == "zarr/icbm152/abc-123"

    root = open_root(output, storage, mode="r")
    array = root["icbm152/abc-123"]
    nx, ny, nz = t2_volume.shape
    assert array.shape == t2_volume.shape and array.chunks == (nx, ny, 1) and array.dtype == np.float32
    z = nz // 2
    np.testing.assert_array_equal(read_axial_slice(root, path, z), t2_volume.data[:, :, z])

    attrs = dict(array.attrs)
    assert attrs["sequence"] == "T2w" and attrs["orientation"] == "RAS" and attrs["axial_axis"] == 2
    np.testing.assert_allclose(attrs["affine"], t2_volume.affine)
    assert attrs["spacing"] == pytest.approx([2.0, 2.0, 2.0])


def test_reading_one_slice_fetches_only_that_chunk_by_byte_range(t2_volume, tmp_path):
    prepare_root(str(tmp_path), ObjectStoreConfig(), ["icbm152"])
    write_volume(open_root(str(tmp_path), ObjectStoreConfig()), "icbm152", "v", t2_volume, {})
    requests = []

    class Spy(zarr.storage.LocalStore):
        async def get(self, key, prototype, byte_range=None):
            requests.append((key, byte_range))
            return await super().get(key, prototype, byte_range)

    root = zarr.open_group(store=Spy(str(tmp_path / "zarr"), read_only=True), mode="r")
    z = t2_volume.shape[2] // 2
    np.testing.assert_array_equal(root["icbm152/v"][:, :, z], t2_volume.data[:, :, z])
    data_reads = [r for key, r in requests if key.startswith("icbm152/v/c/")]
    assert data_reads and all(r is not None for r in data_reads)  # byte ranges, never the whole object
    ranged = [r.end - r.start for r in data_reads if hasattr(r, "end")]
    nx, ny, _ = t2_volume.shape
    assert ranged and max(ranged) <= nx * ny * 4 + 64


def test_parallel_writers_into_a_prepared_root_all_land(t2_volume, object_store, bucket):
    """Workers never create groups, so many of them writing at once into a fresh store cannot race."""
    from concurrent.futures import ThreadPoolExecutor

    output = f"s3://{bucket}/out"
    prepare_root(output, object_store, ["a", "b"])

    def write(i):
        return write_volume(open_root(output, object_store, mode="r+"), "ab"[i % 2], f"v{i}", t2_volume, {})

    with ThreadPoolExecutor(6) as pool:
        paths = list(pool.map(write, range(6)))
    root = open_root(output, object_store, mode="r")
    assert sorted(paths) == sorted(f"zarr/{'ab'[i % 2]}/v{i}" for i in range(6))
    assert all(root[p.removeprefix("zarr/")].shape == t2_volume.shape for p in paths)
