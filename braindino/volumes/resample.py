"""Resampling a canonical volume onto a grid with a given voxel spacing.

Linear interpolation is separable, so it runs as one 1D pass per axis whose spacing changes (an axis
already at its target is untouched): about ten times faster than a 3D ``affine_transform`` on a
1 x 1 x 3 mm scan, with the same values.
"""

from __future__ import annotations

import numpy as np

from braindino.volumes.canonical import CanonicalVolume

SPACING_TOLERANCE_MM = 1e-3


def resample(
    vol: CanonicalVolume, spacing: tuple[float, float, float] | float = 1.0, order: int = 1
) -> CanonicalVolume:
    """Resample ``vol`` to ``spacing`` mm over the same field of view; ``order`` 1 is linear, 0 nearest.

    The new grid keeps the axis directions and is centred on the old one, so the affine stays exact:
    output voxel ``o`` samples input index ``o * target / source + offset`` (clamped at the edges).
    Axes within ``SPACING_TOLERANCE_MM`` of their target are left alone; a volume with none to change
    is returned as is (``resampled: False``).
    """
    if order not in (0, 1):
        raise ValueError(f"resample supports order 0 (nearest) or 1 (linear), got {order}")
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    source = np.asarray(vol.spacing, dtype=np.float64)
    changing = [axis for axis in range(3) if abs(source[axis] - target[axis]) > SPACING_TOLERANCE_MM]
    if not changing:
        return vol.with_data(vol.data, resampled=False)
    step, offset = np.ones(3), np.zeros(3)
    data = vol.data
    for axis in changing:
        size_in = data.shape[axis]
        size_out = max(1, int(round(size_in * source[axis] / target[axis])))
        step[axis] = target[axis] / source[axis]
        offset[axis] = ((size_in - 1) - (size_out - 1) * step[axis]) / 2
        positions = np.clip(np.arange(size_out) * step[axis] + offset[axis], 0, size_in - 1)
        data = interpolate_axis(data, axis, positions, order)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(step)
    index_map[:3, 3] = offset
    return vol.with_data(
        data,
        affine=vol.affine @ index_map,
        resampled=True,
        interpolation="linear" if order == 1 else "nearest",
        spacing_before=[float(s) for s in source],
        shape_before=[int(n) for n in vol.shape],
    )


def interpolate_axis(data: np.ndarray, axis: int, positions: np.ndarray, order: int) -> np.ndarray:
    """Sample ``data`` at fractional indices ``positions`` along one axis (linear or nearest).

    Works slab by slab into a Fortran-ordered output, so a canonical volume keeps its layout (along the
    axial axis each slab is one contiguous block) and no full-size temporaries are made.
    """
    shape = list(data.shape)
    shape[axis] = positions.size
    out = np.empty(shape, dtype=np.float32, order="F")
    source, target = np.moveaxis(data, axis, 0), np.moveaxis(out, axis, 0)
    if order == 0:
        for k, index in enumerate(np.round(positions).astype(np.intp)):
            target[k] = source[index]
        return out
    below = np.floor(positions).astype(np.intp)
    above = np.minimum(below + 1, data.shape[axis] - 1)
    weights = (positions - below).astype(np.float32)
    scratch = np.empty_like(target[0])
    for k, (low, high, weight) in enumerate(zip(below, above, weights)):
        np.multiply(source[low], 1 - weight, out=target[k])
        np.multiply(source[high], weight, out=scratch)
        target[k] += scratch
    return out
