"""PCA-RGB maps of patch features: the first three principal components as colours."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from braindino.volumes.display import background


def pca_rgb(patches: torch.Tensor, grid: tuple[int, int], foreground: torch.Tensor | None = None) -> np.ndarray:
    """Project patch features ``[N, h*w, D]`` on their first three principal components -> uint8 ``[N, h, w, 3]``.

    The components and the colour range are fitted jointly over all slices, so colours are comparable
    across them. With ``foreground`` (``[N, h*w]`` bool: patches that show the subject) they are fitted on
    those patches only and every other patch is black.
    """
    n, tokens, dim = patches.shape
    x = patches.reshape(-1, dim).float()
    keep = torch.ones(n * tokens, dtype=torch.bool) if foreground is None else foreground.reshape(-1).bool()
    if not keep.any():
        return np.zeros((n, *grid, 3), dtype=np.uint8)
    fitted = x[keep]
    mean = fitted.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(fitted - mean, full_matrices=False)
    components = (x - mean) @ v[:3].T if v.shape[0] >= 3 else F.pad((x - mean) @ v.T, (0, 3 - v.shape[0]))
    low, high = components[keep].quantile(0.01, dim=0), components[keep].quantile(0.99, dim=0)
    rgb = ((components - low) / (high - low).clamp_min(1e-6)).clamp(0, 1) * keep.unsqueeze(1)
    return (rgb.reshape(n, *grid, 3).numpy() * 255).astype(np.uint8)


def patch_foreground(images: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """``[N, h*w]`` bool: the patches of a ``grid`` over whole slices ``[N, H, W]`` that hold any pixel that is not
    ``background`` (the display's background rule), for ``pca_rgb``."""
    masks = torch.tensor(np.stack([~background(image) for image in images]), dtype=torch.float32)
    return (F.adaptive_max_pool2d(masks.unsqueeze(1), grid) > 0).reshape(len(images), -1)
