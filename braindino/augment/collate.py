"""The multi-crop batch contract between the data pipeline and the self-distillation step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # imported for annotations only: braindino.ssl may import this module
    from braindino.ssl.masking import BlockMaskGenerator


@dataclass
class MultiCropBatch:
    """One training batch of ``B`` slices, every crop tensor view-major (all slices' view 0, then view 1)."""

    global_crops: Tensor  # [n_global*B, 1, G, G] float32
    local_crops: Tensor  # [n_local*B, 1, L, L] float32 (may have 0 rows)
    masks: Tensor  # [n_global*B, N] bool, N = (G/16)**2, True = masked
    n_global: int
    n_local: int

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "MultiCropBatch":
        """The batch on ``device``; ``dtype`` casts the crops only (masks stay bool)."""
        return MultiCropBatch(
            global_crops=self.global_crops.to(device=device, dtype=dtype),
            local_crops=self.local_crops.to(device=device, dtype=dtype),
            masks=self.masks.to(device=device),
            n_global=self.n_global,
            n_local=self.n_local,
        )


def collate_multicrop(samples: list[dict], mask_generator: BlockMaskGenerator, patch_size: int = 16) -> MultiCropBatch:
    """Stack ``MultiCropAugment`` outputs (``{"global": [...], "local": [...]}``) into a batch with masks."""
    if not samples:
        raise ValueError("collate_multicrop needs at least one sample")
    n_global, n_local = len(samples[0]["global"]), len(samples[0]["local"])
    global_crops = _stack_view_major([s["global"] for s in samples], n_global)
    if n_local:
        local_crops = _stack_view_major([s["local"] for s in samples], n_local)
    else:
        local_crops = torch.zeros((0, 1, 0, 0))
    if global_crops.shape[-1] % patch_size:
        raise ValueError(f"global crops of {global_crops.shape[-1]} px are not a multiple of patch_size {patch_size}")
    return batch_from_views(global_crops, local_crops, n_global, n_local, mask_generator)


def batch_from_views(global_crops: Tensor, local_crops: Tensor, n_global: int, n_local: int,
                     mask_generator: BlockMaskGenerator) -> MultiCropBatch:
    """Wrap ``BatchedMultiCrop`` outputs (already view-major) into a batch, masks on the crops' device."""
    if global_crops.shape[0] % n_global or (n_local and local_crops.shape[0] % n_local):
        raise ValueError(f"crop rows ({global_crops.shape[0]} global, {local_crops.shape[0]} local) are not "
                         f"multiples of n_global={n_global} and n_local={n_local}")
    grid = tuple(mask_generator.grid)
    side = global_crops.shape[-1]
    if side % grid[0] or side % grid[1] or side // grid[0] != side // grid[1]:
        raise ValueError(f"mask grid {grid} does not tile global crops of {side} px with square patches")
    masks = mask_generator(global_crops.shape[0]).to(global_crops.device)
    return MultiCropBatch(global_crops.float(), local_crops.float(), masks, n_global, n_local)


def _stack_view_major(views_per_sample: list[list[np.ndarray]], views: int) -> Tensor:
    """``[views * B, 1, S, S]`` float32 with row ``v * B + b`` = view ``v`` of sample ``b``."""
    if any(len(item) != views for item in views_per_sample):
        raise ValueError(f"every sample must carry {views} views of each kind")
    stacked = np.stack([item[v] for v in range(views) for item in views_per_sample]).astype(np.float32, copy=False)
    return torch.from_numpy(stacked).unsqueeze(1)
