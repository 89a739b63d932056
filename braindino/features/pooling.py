"""Volume-level pooling of slice embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionPooling(nn.Module):
    """Learned softmax weighting of slice embeddings ``[S, D]`` (or ``[B, S, D]``) into one ``[D]`` (``[B, D]``).

    Starts as the plain mean: the scoring layer is zero-initialised, so all slices weigh the same until trained.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, slices: Tensor) -> Tensor:
        weights = torch.softmax(self.score(self.norm(slices)), dim=-2)
        return (weights * slices).sum(dim=-2)
