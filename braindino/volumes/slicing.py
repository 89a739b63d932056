"""Axial slices of a canonical volume: axis 2 of the RAS array, cropped or padded to a square."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from braindino.volumes.canonical import CanonicalVolume


class Slice(NamedTuple):
    """One kept axial slice: its index in the canonical volume, its square image, its foreground fraction."""

    z: int
    image: np.ndarray  # [size, size] float32
    foreground_fraction: float


def non_empty_range(vol: CanonicalVolume) -> tuple[int, int]:
    """``(first, stop)`` of the axial indices holding any non-zero voxel; ``(0, 0)`` for an empty volume."""
    return occupied_range(nonzero_per_slice(vol))


def nonzero_per_slice(vol: CanonicalVolume) -> np.ndarray:
    """How many non-zero voxels each axial slice holds (one contiguous block per slice in the canonical layout)."""
    nonzero = vol.data != 0
    return np.array([np.count_nonzero(nonzero[:, :, z]) for z in range(vol.shape[2])], dtype=np.int64)


def occupied_range(counts: np.ndarray) -> tuple[int, int]:
    occupied = np.flatnonzero(counts)
    if occupied.size == 0:
        return 0, 0
    return int(occupied[0]), int(occupied[-1]) + 1


def centre_window(extent: int, size: int) -> tuple[slice, slice]:
    """``(source, destination)`` index ranges that centre ``extent`` samples in ``size``: crop the excess,
    pad the shortfall."""
    if extent >= size:
        start = (extent - size) // 2
        return slice(start, start + size), slice(0, size)
    start = (size - extent) // 2
    return slice(0, extent), slice(start, start + extent)


def centre_pad_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Centre a 2D image in a ``size x size`` canvas: crop the excess, pad the shortfall with 0."""
    out = np.zeros((size, size), dtype=np.float32)
    (src_x, dst_x), (src_y, dst_y) = (centre_window(extent, size) for extent in image.shape)
    out[dst_x, dst_y] = image[src_x, src_y]
    return out


def axial_slices(vol: CanonicalVolume, size: int = 256, min_foreground: float = 0.05) -> list[Slice]:
    """The axial slices worth keeping, in increasing ``z``.

    Slices come from ``vol.data[:, :, z]`` (rows run left -> right, columns posterior -> anterior)
    within the non-empty axial range, and are kept when the fraction of non-zero voxels in the
    canonical slice is at least ``min_foreground``. Each is centred (``centre_pad_crop``) in a
    ``size x size`` float32 image; the images are views of one C-contiguous ``[n, size, size]`` array,
    allocated once.
    """
    counts = nonzero_per_slice(vol)
    first, stop = occupied_range(counts)
    fractions = counts / float(vol.shape[0] * vol.shape[1])
    kept = [z for z in range(first, stop) if fractions[z] >= min_foreground]
    images = np.zeros((len(kept), size, size), dtype=np.float32)
    (src_x, dst_x), (src_y, dst_y) = (centre_window(extent, size) for extent in vol.shape[:2])
    window = vol.data[src_x, src_y]
    for image, z in zip(images, kept):
        image[dst_x, dst_y] = window[:, :, z]
    return [Slice(z, image, float(fractions[z])) for z, image in zip(kept, images)]


def evenly_spaced(slices: list[Slice], count: int) -> list[Slice]:
    """At most ``count`` slices spread evenly over ``slices`` (first and last kept): the evaluation sampling."""
    if len(slices) <= count:
        return list(slices)
    picks = np.round(np.linspace(0, len(slices) - 1, count)).astype(int)
    return [slices[i] for i in picks]
