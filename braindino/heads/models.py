"""Light task heads on a frozen encoder's features.

- ``EmbeddingHead``: slice embeddings ``[B, S, D]`` -> pooled over slices (mean, or learned attention)
  -> LayerNorm -> Linear -> GELU -> Linear: class logits, a regression value or a Cox risk score.
- ``SegmentationDecoder``: patch tokens of several blocks ``[B, n_blocks, h*w, D]`` -> per-block LayerNorm,
  concatenated and projected -> two convolution + 2x upsampling stages -> class logits, resized to the
  slice (``h*patch x w*patch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from braindino.features.pooling import AttentionPooling, masked_mean

Pooling = Literal["mean", "attention"]


@dataclass(frozen=True)
class EmbeddingHeadConfig:
    in_dim: int
    out_dim: int
    hidden_dim: int = 768
    pooling: Pooling = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {self.pooling!r}")


class EmbeddingHead(nn.Module):
    def __init__(self, config: EmbeddingHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.pooling = AttentionPooling(config.in_dim) if config.pooling == "attention" else None
        self.mlp = nn.Sequential(nn.LayerNorm(config.in_dim), nn.Linear(config.in_dim, config.hidden_dim), nn.GELU(),
                                 nn.Linear(config.hidden_dim, config.out_dim))

    def forward(self, slices: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[B, S, D]`` slice embeddings (``mask`` ``[B, S]`` True for real slices) -> ``[B, out_dim]``."""
        pooled = self.pooling(slices, mask) if self.pooling is not None else masked_mean(slices, mask)
        return self.mlp(pooled)


@dataclass(frozen=True)
class DecoderConfig:
    embed_dim: int
    n_blocks: int
    n_classes: int
    patch_size: int = 16
    width: int = 128  # channels after the projection; halved by each upsampling stage


class SegmentationDecoder(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.norms = nn.ModuleList(nn.LayerNorm(config.embed_dim) for _ in range(config.n_blocks))
        self.project = nn.Linear(config.n_blocks * config.embed_dim, width)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1), nn.GroupNorm(1, c // 2), nn.GELU())
            for c in (width, width // 2)
        )
        self.classify = nn.Conv2d(width // 4, config.n_classes, 1)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, n_blocks, h*w, D]`` raw patch tokens -> logits ``[B, n_classes, h*patch, w*patch]``."""
        batch = tokens.shape[0]
        normed = [norm(tokens[:, i]) for i, norm in enumerate(self.norms)]
        x = self.project(torch.cat(normed, dim=-1))
        x = x.transpose(1, 2).reshape(batch, -1, *grid)
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2, mode="bilinear", align_corners=False)
        size = (grid[0] * self.config.patch_size, grid[1] * self.config.patch_size)
        return F.interpolate(self.classify(x), size=size, mode="bilinear", align_corners=False)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
