"""Resampling a canonical volume onto a grid with a given voxel spacing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from braindino.volumes.canonical import CanonicalVolume

SPACING_TOLERANCE_MM = 1e-3


def resample(
    vol: CanonicalVolume, spacing: tuple[float, float, float] | float = 1.0, order: int = 1
) -> CanonicalVolume:
    """Resample ``vol`` to ``spacing`` mm (linear by default) over the same field of view.

    The new grid keeps the axis directions and is centred on the old one, so the affine stays exact:
    output voxel ``o`` samples input index ``o * target / source + offset``. A volume already within
    ``SPACING_TOLERANCE_MM`` of the target is returned unchanged (recorded as ``resampled: False``).
    """
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    source = np.asarray(vol.spacing, dtype=np.float64)
    if np.all(np.abs(source - target) <= SPACING_TOLERANCE_MM):
        return vol.with_data(vol.data, resampled=False)
    in_shape = np.asarray(vol.shape, dtype=np.float64)
    out_shape = np.maximum(1, np.round(in_shape * source / target)).astype(int)
    step = target / source
    offset = ((in_shape - 1) - (out_shape - 1) * step) / 2
    resampled = ndimage.affine_transform(
        vol.data, step, offset=offset, output_shape=tuple(out_shape), order=order, mode="nearest", prefilter=False
    )
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(step)
    index_map[:3, 3] = offset
    return vol.with_data(
        resampled,
        affine=vol.affine @ index_map,
        resampled=True,
        spacing_before=[float(s) for s in source],
        shape_before=[int(n) for n in vol.shape],
    )
