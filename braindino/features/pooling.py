"""Volume-level pooling of slice embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionPooling(nn.Module):
    """Learned softmax weighting of slice embeddings ``[S, D]`` (or ``[B, S, D]``) into one ``[D]`` (``[B, D]``).

    Starts as the plain mean: the scoring layer is zero-initialised, so all slices weigh the same until
    trained. ``mask`` (``[S]`` or ``[B, S]``, True for real slices) leaves padding slices out.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, slices: Tensor, mask: Tensor | None = None) -> Tensor:
        scores = self.score(self.norm(slices))
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(scores, dim=-2)
        return (weights * slices).sum(dim=-2)


def masked_mean(slices: Tensor, mask: Tensor | None = None) -> Tensor:
    """The mean of slice embeddings ``[..., S, D]`` over the slices where ``mask`` (``[..., S]``) is True."""
    if mask is None:
        return slices.mean(dim=-2)
    weights = mask.unsqueeze(-1).to(slices.dtype)
    return (weights * slices).sum(dim=-2) / weights.sum(dim=-2).clamp_min(1.0)
