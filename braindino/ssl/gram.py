"""Gram anchoring (stage 2): keep the student's patch-similarity structure close to a frozen Gram teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class GramConfig:
    """Gram anchoring for one stage: the loss weight (0: off) and the Gram teacher's input scale."""

    weight: float = 0.0
    input_scale: float = 1.0  # >1 feeds the Gram teacher upsampled crops (sharper patch similarities)


def resize_token_grid(tokens: Tensor, grid: tuple[int, int], target: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Interpolate patch tokens ``[B, h*w, D]`` on their 2D grid to ``target`` ``(h', w')``."""
    if tuple(grid) == tuple(target):
        return tokens
    batch, n_tokens, dim = tokens.shape
    if n_tokens != grid[0] * grid[1]:
        raise ValueError(f"{n_tokens} tokens do not fill a {grid[0]}x{grid[1]} grid")
    image = tokens.transpose(1, 2).reshape(batch, dim, *grid)
    resized = F.interpolate(image.float(), size=target, mode=mode, align_corners=False)
    return resized.flatten(2).transpose(1, 2).to(tokens.dtype)


def patch_gram(tokens: Tensor) -> Tensor:
    """Cosine-similarity matrix ``[B, N, N]`` of patch tokens ``[B, N, D]``."""
    x = F.normalize(tokens.float(), dim=-1)
    return x @ x.transpose(1, 2)


def gram_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    student_grid: tuple[int, int],
    teacher_grid: tuple[int, int],
) -> Tensor:
    """MSE between student and Gram-teacher patch Gram matrices; teacher tokens are resized to the student grid."""
    teacher = resize_token_grid(teacher_patches.detach(), teacher_grid, student_grid)
    return F.mse_loss(patch_gram(student_patches), patch_gram(teacher))
