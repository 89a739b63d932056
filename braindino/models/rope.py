"""Axial 2D rotary position embedding (RoPE) for patch tokens.

Each attention head's channels are split in two halves; the first half is rotated by the token's
row coordinate and the second by its column coordinate, so the dot product of a query and a key
depends only on their *relative* grid offset. Coordinates are in patch units, centred on the grid,
which makes any grid size valid: there is no position table to interpolate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def grid_coordinates(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``[height*width, 2]`` (row, column) coordinates of a row-major token grid, centred on zero."""
    rows = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)


def rope_angles(coords: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables ``[N, head_dim]`` for tokens at ``coords`` ``[N, 2]``.

    A quarter of the head channels carry row frequencies and a quarter column frequencies; each
    frequency rotates the channel pair (i, i + head_dim/2).
    """
    if head_dim % 4:
        raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
    n_freq = head_dim // 4
    inv_freq = base ** (-torch.arange(n_freq, device=coords.device, dtype=torch.float32) / n_freq)
    angles = torch.cat([coords[:, :1] * inv_freq, coords[:, 1:] * inv_freq], dim=-1)  # [N, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the last dimension of ``x`` ``[..., N, head_dim]`` by the given tables."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


def rope_attention(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, n_prefix: int) -> Tensor:
    """Scaled dot-product attention with RoPE on all tokens after the first ``n_prefix``.

    ``q``, ``k``, ``v`` are ``[B, heads, n_prefix + N, head_dim]``; prefix tokens (CLS, registers)
    are not rotated, so they attend to patches independently of position.
    """
    q = torch.cat([q[:, :, :n_prefix], apply_rope(q[:, :, n_prefix:], cos, sin)], dim=2)
    k = torch.cat([k[:, :, :n_prefix], apply_rope(k[:, :, n_prefix:], cos, sin)], dim=2)
    return F.scaled_dot_product_attention(q, k, v)
