"""Vision Transformer backbone for single-channel MRI slices.

Patch size 16, register tokens, axial 2D RoPE instead of a position table (any input whose sides
are multiples of the patch size is valid; ``ViTConfig.rope`` sets its coordinate layout and training
augmentation), LayerScale, stochastic depth and a learned mask token that replaces masked patch
embeddings (iBOT). Sizes come from ``ViTConfig.size``:

| size  | embed_dim | depth | heads | params  | use                          |
|-------|-----------|-------|-------|---------|------------------------------|
| micro | 64        | 2     | 2     | ~0.1 M  | CI and CPU smoke tests       |
| tiny  | 192       | 12    | 3     | ~5.5 M  | quick experiments            |
| small | 384       | 12    | 6     | ~22 M   | ViT-S                        |
| base  | 768       | 12    | 12    | ~86 M   | ViT-B, the paper's encoder   |
| large | 1024      | 24    | 16    | ~303 M  | ViT-L                        |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from braindino.models.layers import Block, init_linear_layers
from braindino.models.rope import RopeConfig, RotaryEmbedding

ViTSize = Literal["micro", "tiny", "small", "base", "large"]

SIZE_PRESETS: dict[str, tuple[int, int, int]] = {
    "micro": (64, 2, 2),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


@dataclass
class ViTConfig:
    """Backbone hyper-parameters. ``embed_dim``, ``depth`` and ``num_heads`` default to the ``size`` preset."""

    size: ViTSize = "base"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int = 16
    in_channels: int = 1
    num_registers: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    layerscale_init: float = 1e-5
    drop_path_rate: float = 0.0
    rope: RopeConfig = field(default_factory=RopeConfig)

    def __post_init__(self) -> None:
        if self.size not in SIZE_PRESETS:
            raise ValueError(f"unknown ViT size {self.size!r}; choose one of {sorted(SIZE_PRESETS)}")
        dim, depth, heads = SIZE_PRESETS[self.size]
        self.embed_dim = dim if self.embed_dim is None else self.embed_dim
        self.depth = depth if self.depth is None else self.depth
        self.num_heads = heads if self.num_heads is None else self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BackboneOutput:
    """Token groups of one forward pass; ``cls``, ``registers`` and ``patches`` are after the final norm.

    ``blocks`` maps a block index to that block's raw patch tokens ``[B, N, D]`` (before the final norm).
    """

    cls: Tensor
    registers: Tensor
    patches: Tensor
    grid: tuple[int, int]
    blocks: dict[int, Tensor] = field(default_factory=dict)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: ``[B, C, H, W]`` -> ``[B, H/p * W/p, D]`` row-major."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


class VisionTransformer(nn.Module):
    """ViT backbone: ``backbone(x, masks=None, return_blocks=()) -> BackboneOutput``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim, depth = config.embed_dim, config.depth
        self.patch_embed = PatchEmbed(config.patch_size, config.in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        drop_rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.layerscale_init, rate)
            for rate in drop_rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.rope = RotaryEmbedding(config.rope, dim // config.num_heads)
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: CLS then registers."""
        return 1 + self.config.num_registers

    def reset_parameters(self) -> None:
        """Truncated-normal linear weights, zero biases, small random CLS/register tokens, zero mask token."""
        init_linear_layers(self)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)

    def forward(self, x: Tensor, masks: Tensor | None = None, return_blocks: tuple[int, ...] = ()) -> BackboneOutput:
        """Encode ``x`` ``[B, C, H, W]``; ``masks`` ``[B, N]`` (True = masked) swaps in the mask token."""
        patches, grid = self.patch_embed(x)
        if masks is not None:
            patches = torch.where(masks.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        batch = patches.shape[0]
        tokens = torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1), patches], dim=1
        )
        cos, sin = self.rope(grid, x.device)
        prefix = self.n_prefix
        blocks = {}
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, cos, sin, prefix)
            if index in return_blocks:
                blocks[index] = tokens[:, prefix:].clone()
        # Every output is a tensor of its own, not a view of ``tokens`` (LayerNorm is per token, so norming
        # the groups apart changes nothing): FSDP2 hooks its backward all-gather on a root's outputs, and an
        # in-place op on a view would drop that hook.
        return BackboneOutput(
            cls=self.norm(tokens[:, 0]),
            registers=self.norm(tokens[:, 1:prefix]),
            patches=self.norm(tokens[:, prefix:]),
            grid=grid,
            blocks=blocks,
        )


def fold_rgb_patch_embedding(weight: Tensor) -> Tensor:
    """Fold a 3-channel patch kernel ``[D, 3, p, p]`` into one channel by summing over input channels.

    A grey image repeated to RGB then gives the same patch embedding as the folded kernel on the grey image.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a conv kernel [D, C, p, p], got shape {tuple(weight.shape)}")
    return weight.sum(dim=1, keepdim=True)


def load_natural_image_weights(backbone: VisionTransformer, state_dict: dict[str, Tensor]) -> None:
    """Strictly load a state dict in this backbone's key layout, folding an RGB patch kernel to one channel."""
    key = "patch_embed.proj.weight"
    state_dict = dict(state_dict)
    if key in state_dict and state_dict[key].shape[1] != backbone.config.in_channels:
        state_dict[key] = fold_rgb_patch_embedding(state_dict[key])
    backbone.load_state_dict(state_dict, strict=True)
