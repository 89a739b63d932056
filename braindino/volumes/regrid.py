"""Mapping values on a canonical grid back onto the grid a scan came in on (same world space, any orientation).

Each voxel of the source grid takes the value at its world position in the canonical volume
(``canonical_affine^-1 @ source_affine`` maps source indices to canonical ones): linear interpolation for
probabilities, nearest neighbour for labels. The canonical volume covers the source's field of view (at
most half a voxel short at an edge after resampling), so positions past its edge take the edge's value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from braindino.volumes.canonical import CanonicalVolume


def source_grid(volume: CanonicalVolume) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The affine and shape of the grid ``volume`` was canonicalised from, as its provenance records them."""
    provenance: dict[str, Any] = volume.provenance
    if "source_affine" not in provenance or "source_shape" not in provenance:
        raise ValueError("this canonical volume does not record its source grid (provenance source_affine/source_shape); "
                         "re-ingest the scan so that results can be mapped back onto it")
    return np.asarray(provenance["source_affine"], dtype=np.float64), tuple(int(n) for n in provenance["source_shape"])


def to_source_grid(values: np.ndarray, canonical_affine: np.ndarray, source_affine: np.ndarray,
                   source_shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """``values`` (``[X, Y, Z]`` on the canonical grid) resampled onto the source grid (``source_shape``)."""
    if order not in (0, 1):
        raise ValueError(f"to_source_grid supports order 0 (nearest) or 1 (linear), got {order}")
    index_map = np.linalg.inv(np.asarray(canonical_affine, dtype=np.float64)) @ np.asarray(source_affine, dtype=np.float64)
    return ndimage.affine_transform(np.asarray(values, dtype=np.float32), index_map[:3, :3], offset=index_map[:3, 3],
                                    output_shape=tuple(source_shape), order=order, mode="nearest")


def labels_to_source_grid(probabilities: np.ndarray, canonical_affine: np.ndarray, source_affine: np.ndarray,
                          source_shape: tuple[int, int, int]) -> np.ndarray:
    """A label volume on the source grid from class probabilities ``[K, X, Y, Z]`` on the canonical grid
    (class 0 is background): each class interpolated linearly, then the most probable class per voxel."""
    mapped = np.stack([to_source_grid(p, canonical_affine, source_affine, source_shape, order=1) for p in probabilities])
    return np.argmax(mapped, axis=0).astype(np.int16)
