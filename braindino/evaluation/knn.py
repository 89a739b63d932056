"""The kNN probe: a cosine nearest-neighbour classifier with temperature-weighted votes on frozen features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_probabilities(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, n_classes: int,
                      k: int = 10, temperature: float = 0.07) -> torch.Tensor:
    """Class probabilities ``[Q, n_classes]`` of each query from its ``k`` most cosine-similar bank rows.

    Each neighbour votes for its class with weight ``exp(similarity / temperature)``; votes are normalised
    to sum to one.
    """
    bank, queries = F.normalize(bank.float(), dim=-1), F.normalize(queries.float(), dim=-1)
    top, index = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(queries), n_classes)
    votes.scatter_add_(1, bank_labels.long()[index], ((top - top[:, :1]) / temperature).exp())
    return votes / votes.sum(dim=1, keepdim=True)


def knn_accuracy(features: torch.Tensor, labels: list[str], train: np.ndarray, k: int = 10,
                 temperature: float = 0.07) -> float:
    """Accuracy of the kNN probe from the ``train`` rows (boolean mask) to the others."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    train_rows, query_rows = torch.from_numpy(train), torch.from_numpy(~train)
    if not query_rows.any() or not train_rows.any():
        return float("nan")
    probabilities = knn_probabilities(features[train_rows], y[train_rows], features[query_rows], len(classes), k, temperature)
    return (probabilities.argmax(1) == y[query_rows]).float().mean().item()
