"""PCA-RGB maps of patch features: the first three principal components as colours."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pca_rgb(patches: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Project patch features ``[N, h*w, D]`` on their first three principal components -> uint8 ``[N, h, w, 3]``.

    The components are fitted jointly over all slices, so colours are comparable across them.
    """
    n, tokens, dim = patches.shape
    x = patches.reshape(-1, dim).float()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = x @ v[:3].T if v.shape[0] >= 3 else F.pad(x @ v.T, (0, 3 - v.shape[0]))
    low, high = components.quantile(0.01, dim=0), components.quantile(0.99, dim=0)
    rgb = ((components - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return (rgb.reshape(n, *grid, 3).numpy() * 255).astype(np.uint8)
