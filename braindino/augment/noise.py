"""A pool of standard normal draws that the per-sample CPU multi-crop reads its noise from.

Drawing fresh normals costs ~4-10 ns each on one core, more than every other per-pixel operation of an
augmented crop together (Rician noise needs two per pixel). The pool is drawn once from a generator
spawned from the augmenter's seed; each noisy crop then reads one contiguous window at a uniformly random offset. Within a
crop the noise is therefore exactly i.i.d. N(0, 1); two crops may share a (shifted) stretch of the pool,
which no per-crop statistic can see and a pool of millions of draws makes rare.
"""

from __future__ import annotations

import math

import numpy as np

# 4 Mi float32 draws (16 MiB): a global 224 px crop with Rician noise reads 100 k of them.
NOISE_POOL_SIZE = 1 << 22


class NormalPool:
    """``pool.windows(positions, shape)``: one array of ``shape`` filled with standard normals per position."""

    def __init__(self, rng: np.random.Generator, size: int = NOISE_POOL_SIZE):
        self.values = rng.standard_normal(size, dtype=np.float32)

    def windows(self, positions: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
        """Views of ``shape`` into the pool (not to be written to), one per uniform draw in ``positions``
        ([0, 1)), each starting at that fraction of the possible offsets."""
        length = math.prod(shape)
        if length > self.values.size:
            raise ValueError(f"a noise window of {length} values does not fit a pool of {self.values.size}; "
                             f"use smaller crops or a larger NOISE_POOL_SIZE")
        starts = (np.asarray(positions, dtype=np.float64) * (self.values.size - length + 1)).astype(np.intp)
        return [self.values[start:start + length].reshape(shape) for start in starts]
