"""The kNN probe: a cosine nearest-neighbour classifier with temperature-weighted votes on frozen features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_accuracy(features: torch.Tensor, labels: list[str], train: np.ndarray, k: int = 10,
                 temperature: float = 0.07) -> float:
    """Accuracy of a cosine kNN classifier (temperature-weighted votes) from the train rows to the others."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    feats = F.normalize(features.float(), dim=-1)
    bank, queries = feats[torch.from_numpy(train)], feats[torch.from_numpy(~train)]
    if len(queries) == 0 or len(bank) == 0:
        return float("nan")
    sims = queries @ bank.T
    top, idx = sims.topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(queries), len(classes))
    votes.scatter_add_(1, y[torch.from_numpy(train)][idx], (top / temperature).exp())
    return (votes.argmax(1) == y[torch.from_numpy(~train)]).float().mean().item()
