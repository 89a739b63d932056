"""Canonical volumes in zarr v3: one group per dataset, one float32 array per scan, one chunk per axial slice.

Written by ingest, read back by its QC montages and by anything that needs whole volumes.

The store lives at ``<output root>/zarr`` (local folder or S3 through s3fs). Arrays are named by
``volume_id`` (scan pseudonym + content digest), so rewriting the same content is idempotent and a
changed scan never overwrites the data its superseded manifest row points to. Chunks are
``(X, Y, 1)``, packed by zarr's sharding codec into one object per scan: S3 holds one object per
volume, and reading ``array[:, :, z]`` fetches the shard index and that one chunk by byte range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from braindino.volumes import CanonicalVolume
from datastore.objectstore import ObjectStoreConfig

ZARR_FOLDER = "zarr"


def open_root(output: str, storage: ObjectStoreConfig, mode: str = "a") -> zarr.Group:
    """The root group of the volume store under ``output`` (``s3://bucket/prefix`` or a local folder)."""
    store = storage.zarr_store(f"{output.rstrip('/')}/{ZARR_FOLDER}", read_only=mode == "r")
    return zarr.open_group(store=store, mode=mode)


def prepare_root(output: str, storage: ObjectStoreConfig, datasets: list[str]) -> None:
    """Create the root and one group per dataset, once, before parallel writers open the store.

    Creating groups is not atomic: two workers that both find a group missing race to create it and
    one fails. Writers therefore only add arrays to groups that already exist.
    """
    root = open_root(output, storage)
    for dataset in datasets:
        root.require_group(dataset)


def write_volume(root: zarr.Group, dataset: str, volume_id: str, volume: CanonicalVolume, attrs: dict[str, Any]) -> str:
    """Store ``volume`` as ``<dataset>/<volume_id>`` with its geometry and ``attrs``; returns the path
    relative to the output root (the manifest's ``zarr_path``). The dataset group must exist
    (``prepare_root``)."""
    group = root[dataset]
    nx, ny, _ = volume.shape
    array = group.create_array(volume_id, shape=volume.shape, dtype="float32", chunks=(nx, ny, 1), shards=volume.shape, overwrite=True)
    array[...] = volume.data
    array.attrs.update({
        **attrs,
        "spacing": list(volume.spacing),
        "affine": np.asarray(volume.affine, dtype=float).tolist(),
        "orientation": volume.orientation,
        "axial_axis": 2,
    })
    return f"{ZARR_FOLDER}/{dataset}/{volume_id}"


def stored_array(root: zarr.Group, zarr_path: str) -> zarr.Array:
    """The array at a manifest's ``zarr_path``."""
    return root[zarr_path.removeprefix(f"{ZARR_FOLDER}/")]


def read_axial_slice(root: zarr.Group, zarr_path: str, z: int) -> np.ndarray:
    """One axial slice of a stored volume (a single chunk read)."""
    return np.asarray(stored_array(root, zarr_path)[:, :, z])


def volume_attrs(root: zarr.Group, zarr_path: str) -> dict[str, Any]:
    """The attributes stored beside a volume (geometry, provenance, pseudonyms)."""
    return dict(stored_array(root, zarr_path).attrs)
