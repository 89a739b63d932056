"""Axial 2D rotary position embedding (RoPE) for patch tokens.

Each attention head's channels are split in two halves; the first half is rotated by the token's
row coordinate and the second by its column coordinate, so the dot product of two patch tokens
depends only on their *relative* position. There is no position table, so any grid size is valid.
CLS and register tokens are never rotated.

Coordinate layouts (``RopeConfig.coordinates``):

- ``normalized``: patch centres in image units, the longer image side spanning [-1, 1], at every
  grid size. A 512 px crop then covers the same coordinate range as a 224 px one (the grid is only
  denser), so attention learned at one resolution transfers to another. Angles are
  ``2 pi * coordinate / period`` with periods from 1 to ``base``.
- ``patch_index``: centred patch indices (a 14-patch grid spans +/-6.5, a 32-patch grid +/-15.5),
  angles ``index / period``. Encoders exported before ``normalized`` existed use it.

While the module is in training mode the coordinates can be augmented, one draw per forward pass:
``shift`` adds a uniform offset in [-shift, shift] to each axis, ``jitter`` scales each axis by a
log-uniform factor in [1/jitter, jitter], ``rescale`` scales both axes by one log-uniform factor in
[1/rescale, rescale]. In eval mode (teachers, the frozen encoder) they are off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CoordinateLayout = Literal["normalized", "patch_index"]


@dataclass
class RopeConfig:
    """RoPE of the ViT: frequency base, coordinate layout and training-time coordinate augmentation."""

    base: float = 100.0
    coordinates: CoordinateLayout = "normalized"
    shift: float = 0.0  # 0: off
    jitter: float = 1.0  # 1: off
    rescale: float = 1.0  # 1: off

    def __post_init__(self) -> None:
        if self.shift < 0 or self.jitter < 1 or self.rescale < 1:
            raise ValueError(f"RoPE augmentation needs shift >= 0, jitter >= 1 and rescale >= 1, got shift="
                             f"{self.shift}, jitter={self.jitter}, rescale={self.rescale}")


def grid_coordinates(height: int, width: int, layout: CoordinateLayout = "normalized",
                     device: torch.device | None = None) -> Tensor:
    """``[height*width, 2]`` (row, column) coordinates of a row-major patch grid in ``layout``."""
    rows = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    cols = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    if layout == "normalized":
        longer = max(height, width)
        rows, cols = (2 * rows - height) / longer, (2 * cols - width) / longer
    elif layout == "patch_index":
        rows, cols = rows - height / 2, cols - width / 2
    else:
        raise ValueError(f"unknown RoPE coordinate layout {layout!r}: use 'normalized' or 'patch_index'")
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def augment_coordinates(coords: Tensor, shift: float, jitter: float, rescale: float) -> Tensor:
    """``coords`` shifted per axis, then scaled per axis (jitter) and on both axes (rescale), at random."""
    def log_uniform(limit: float, count: int) -> Tensor:
        return torch.empty(count).uniform_(-math.log(limit), math.log(limit)).exp().to(coords.device)

    if shift > 0:
        coords = coords + torch.empty(2).uniform_(-shift, shift).to(coords.device)
    if jitter > 1:
        coords = coords * log_uniform(jitter, 2)
    if rescale > 1:
        coords = coords * log_uniform(rescale, 1)
    return coords


def rope_angles(coords: Tensor, head_dim: int, base: float, angle_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables ``[N, head_dim]`` for tokens at ``coords`` ``[N, 2]``.

    A quarter of the head channels carry row frequencies and a quarter column frequencies, with periods
    ``base ** (i / n)`` for ``i < n = head_dim / 4``; each frequency rotates the channel pair
    (i, i + head_dim/2) by ``angle_scale * coordinate / period``.
    """
    n_freq = head_dim // 4
    inv_freq = angle_scale * base ** (-torch.arange(n_freq, device=coords.device, dtype=torch.float32) / n_freq)
    angles = torch.cat([coords[:, :1] * inv_freq, coords[:, 1:] * inv_freq], dim=-1)  # [N, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class RotaryEmbedding(nn.Module):
    """``rope(grid, device) -> (cos, sin)`` tables for a patch grid; augments coordinates in training mode."""

    ANGLE_SCALE = {"normalized": 2 * math.pi, "patch_index": 1.0}

    def __init__(self, config: RopeConfig, head_dim: int) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.config, self.head_dim = config, head_dim

    def forward(self, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        config = self.config
        coords = grid_coordinates(*grid, layout=config.coordinates, device=device)
        if self.training:
            coords = augment_coordinates(coords, config.shift, config.jitter, config.rescale)
        return rope_angles(coords, self.head_dim, config.base, self.ANGLE_SCALE[config.coordinates])


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the last dimension of ``x`` ``[..., N, head_dim]`` by the given tables."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


def rotate_patches(x: Tensor, cos: Tensor, sin: Tensor, n_prefix: int) -> Tensor:
    """``x`` ``[B, heads, n_prefix + N, head_dim]`` with the N patch tokens rotated and the prefix left as is."""
    return torch.cat([x[:, :, :n_prefix], apply_rope(x[:, :, n_prefix:], cos, sin)], dim=2)


def rope_attention(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, n_prefix: int) -> Tensor:
    """Scaled dot-product attention with RoPE on all tokens after the first ``n_prefix`` (CLS, registers).

    Prefix tokens are not rotated, so they attend to patches independently of position.
    """
    return F.scaled_dot_product_attention(rotate_patches(q, cos, sin, n_prefix),
                                          rotate_patches(k, cos, sin, n_prefix), v)
