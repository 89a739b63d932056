"""Axial slices of a canonical volume: axis 2 of the RAS array, cropped or padded to a square."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from braindino.volumes.canonical import CanonicalVolume


def non_empty_range(vol: CanonicalVolume) -> tuple[int, int]:
    """``(first, stop)`` of the axial indices holding any non-zero voxel; ``(0, 0)`` for an empty volume."""
    occupied = np.flatnonzero(np.any(vol.data != 0, axis=(0, 1)))
    if occupied.size == 0:
        return 0, 0
    return int(occupied[0]), int(occupied[-1]) + 1


def centre_pad_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Centre a 2D image in a ``size x size`` canvas: crop the excess, pad the shortfall with 0."""
    out = np.zeros((size, size), dtype=np.float32)
    src, dst = [], []
    for extent in image.shape:
        if extent >= size:
            start = (extent - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - extent) // 2
            src.append(slice(0, extent))
            dst.append(slice(start, start + extent))
    out[tuple(dst)] = image[tuple(src)]
    return out


def axial_slices(
    vol: CanonicalVolume, size: int = 256, min_foreground: float = 0.05
) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield ``(z, slice, foreground_fraction)`` for the axial slices worth keeping.

    Slices come from ``vol.data[:, :, z]`` (rows run left -> right, columns posterior -> anterior)
    within the non-empty axial range, and are kept when the fraction of non-zero voxels in the
    canonical slice is at least ``min_foreground``. Each is centred in a ``size x size`` float32 image.
    """
    first, stop = non_empty_range(vol)
    if stop == first:
        return
    block = vol.data[:, :, first:stop]
    fractions = np.count_nonzero(block, axis=(0, 1)) / float(block.shape[0] * block.shape[1])
    for offset, fraction in enumerate(fractions):
        if fraction >= min_foreground:
            yield first + offset, centre_pad_crop(block[:, :, offset], size), float(fraction)


def evenly_spaced(slices: list[tuple[int, np.ndarray, float]], count: int) -> list[tuple[int, np.ndarray, float]]:
    """At most ``count`` slices spread evenly over ``slices`` (first and last kept): the evaluation sampling."""
    if len(slices) <= count:
        return list(slices)
    picks = np.round(np.linspace(0, len(slices) - 1, count)).astype(int)
    return [slices[i] for i in picks]
