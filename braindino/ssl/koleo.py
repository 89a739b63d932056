"""KoLeo regulariser: Kozachenko-Leonenko entropy estimate that spreads features over the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """``-mean(log(d_i))`` where ``d_i`` is the distance of L2-normalised feature i to its nearest neighbour.

    Safe on duplicated features: distances are ``sqrt(squared + eps**2)``, so a zero distance gives a
    finite loss and a finite (zero) gradient instead of NaN.
    """
    if features.shape[0] < 2:
        raise ValueError("KoLeo needs at least two features per group")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-float("inf"))
        neighbour = similarity.argmax(dim=1)
    squared = (x - x[neighbour]).pow(2).sum(dim=-1)
    return -torch.log(torch.sqrt(squared + eps**2) + eps).mean()
