"""A pool of standard normal draws that the per-sample CPU multi-crop reads its noise from.

Drawing fresh normals costs ~4-10 ns each on one core, more than every other per-pixel operation of an
augmented crop together (Rician noise needs two per pixel). The pool is drawn once from the augmenter's
own generator; each noisy crop then reads one contiguous window at a uniformly random offset. Within a
crop the noise is therefore exactly i.i.d. N(0, 1); two crops may share a (shifted) stretch of the pool,
which no per-crop statistic can see and a pool of millions of draws makes rare.
"""

from __future__ import annotations

import math

import numpy as np

# 4 Mi float32 draws (16 MiB): a global 224 px crop with Rician noise reads 100 k of them.
NOISE_POOL_SIZE = 1 << 22


class NormalPool:
    """``pool.windows(rng, count, shape)``: ``count`` arrays of ``shape`` filled with standard normals."""

    def __init__(self, rng: np.random.Generator, size: int = NOISE_POOL_SIZE):
        self.values = rng.standard_normal(size, dtype=np.float32)

    def windows(self, rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
        """``count`` views of ``shape`` into the pool (not to be written to), each at its own random offset."""
        length = math.prod(shape)
        if length > self.values.size:
            raise ValueError(f"a noise window of {length} values does not fit a pool of {self.values.size}; "
                             f"use smaller crops or a larger NOISE_POOL_SIZE")
        starts = rng.integers(0, self.values.size - length + 1, count)
        return [self.values[start:start + length].reshape(shape) for start in starts]
