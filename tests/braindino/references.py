"""Float64 reference computations of the self-distillation terms, written independently of the library."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_sinkhorn(logits: torch.Tensor, temperature: float, n_iterations: int = 3) -> torch.Tensor:
    """Plain float64 Sinkhorn-Knopp on one process: alternate prototype and sample normalisation."""
    q = torch.exp(logits.double() / temperature)
    q = q / q.sum()
    n_samples, n_prototypes = q.shape
    for _ in range(n_iterations):
        q = q / q.sum(dim=0, keepdim=True) / n_prototypes
        q = q / q.sum(dim=1, keepdim=True) / n_samples
    return q * n_samples


def cross_entropy_rows(target: torch.Tensor, logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Per-row ``-sum(target * log_softmax(logits / temp))`` in float64."""
    return -(target.double() * torch.log_softmax(logits.double() / temp, dim=-1)).sum(-1)


def cross_entropy64(target: torch.Tensor, logits: torch.Tensor, temp: float) -> float:
    return float(cross_entropy_rows(target, logits, temp).mean())


def koleo64(features: torch.Tensor) -> float:
    """``-mean(log(distance to the nearest other feature))`` of L2-normalised features."""
    x = F.normalize(features.double(), dim=-1)
    distances = torch.cdist(x, x) + torch.diag(torch.full((len(x),), torch.inf, dtype=torch.float64))
    return float(-torch.log(distances.min(dim=1).values).mean())


def gram64(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean squared difference of the patch cosine-similarity matrices ``[B, N, N]``."""
    s, t = F.normalize(student.double(), dim=-1), F.normalize(teacher.double(), dim=-1)
    return float(((s @ s.transpose(1, 2) - t @ t.transpose(1, 2)) ** 2).mean())
