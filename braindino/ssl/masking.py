"""Block masks over the patch grid for the iBOT loss."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


class BlockMaskGenerator:
    """``masks(batch_size) -> Tensor[batch_size, h*w]`` bool, True = masked patch.

    ``round(masked_fraction * batch_size)`` images, chosen at random, are masked; each gets a ratio
    drawn uniformly from ``[min_ratio, max_ratio]`` and rectangles (area at least ``min_block`` patches,
    aspect ratio in ``aspect``) are added until exactly ``round(ratio * h * w)`` patches are masked.
    A block never overshoots the target, so the last ones may be smaller than ``min_block``.
    """

    def __init__(self, grid: tuple[int, int], min_ratio: float = 0.1, max_ratio: float = 0.5,
                 masked_fraction: float = 0.5, min_block: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3),
                 seed: int | np.random.Generator | None = None):
        if not 0 <= min_ratio <= max_ratio <= 1:
            raise ValueError(f"BlockMaskGenerator needs 0 <= min_ratio <= max_ratio <= 1, got {min_ratio}, {max_ratio}")
        if not 0 <= masked_fraction <= 1:
            raise ValueError(f"BlockMaskGenerator.masked_fraction must be in [0, 1], got {masked_fraction}")
        if min_block < 1 or not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"BlockMaskGenerator needs min_block >= 1 and 0 < aspect[0] <= aspect[1], "
                             f"got {min_block}, {aspect}")
        self.grid = tuple(grid)
        self.min_ratio, self.max_ratio = min_ratio, max_ratio
        self.masked_fraction = masked_fraction
        self.min_block = min_block
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int) -> Tensor:
        height, width = self.grid
        masks = np.zeros((batch_size, height, width), dtype=bool)
        chosen = self.rng.permutation(batch_size)[: round(self.masked_fraction * batch_size)]
        for index in chosen:
            ratio = self.rng.uniform(self.min_ratio, self.max_ratio)
            self._fill(masks[index], round(ratio * height * width))
        return torch.from_numpy(masks.reshape(batch_size, height * width))

    def _fill(self, mask: np.ndarray, target: int) -> None:
        """Add random rectangles to ``mask`` until ``target`` patches are masked."""
        height, width = mask.shape
        masked = 0
        while masked < target:
            remaining = target - masked
            area = self.rng.uniform(min(self.min_block, remaining), remaining)
            aspect = math.exp(self.rng.uniform(*self.log_aspect))
            block_h = int(np.clip(round(math.sqrt(area * aspect)), 1, min(height, remaining)))
            block_w = int(np.clip(int(area) // block_h, 1, width))
            top = self.rng.integers(0, height - block_h + 1)
            left = self.rng.integers(0, width - block_w + 1)
            mask[top:top + block_h, left:left + block_w] = True
            masked = int(mask.sum())
