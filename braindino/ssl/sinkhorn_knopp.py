"""Sinkhorn-Knopp centering of teacher prototype scores.

Turns teacher logits into soft assignments whose rows (samples) each sum to one while every
prototype receives an equal share of the total mass, which prevents collapse onto few prototypes.
The iterations run in the log domain, so no temperature or logit scale can overflow or underflow.
When ``torch.distributed`` is initialised, the per-prototype marginals and the sample count are
reduced across ranks so the balance holds over the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _log_column_mass(log_q: Tensor) -> Tensor:
    """``log(sum over all ranks' rows of exp(log_q))`` per column, as ``[1, K]``."""
    if log_q.shape[0]:
        shift = log_q.amax(dim=0, keepdim=True)
    else:
        shift = log_q.new_full((1, log_q.shape[1]), -torch.inf)
    if _distributed():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    mass = torch.exp(log_q - shift).sum(dim=0, keepdim=True)
    if _distributed():
        dist.all_reduce(mass)
    return shift + torch.log(mass)


class SinkhornKnopp:
    """``SinkhornKnopp(n_iterations)(logits [M, K], temperature) -> probabilities [M, K]``, rows summing to one."""

    def __init__(self, n_iterations: int = 3) -> None:
        self.n_iterations = n_iterations

    @torch.no_grad()
    def __call__(self, logits: Tensor, temperature: float) -> Tensor:
        log_q = logits.float() / temperature
        n_samples = torch.tensor(float(log_q.shape[0]), device=log_q.device)
        if _distributed():
            dist.all_reduce(n_samples)
        log_n_prototypes = math.log(log_q.shape[1])
        for _ in range(self.n_iterations):
            log_q = log_q - _log_column_mass(log_q) - log_n_prototypes  # each prototype holds mass 1/K
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - torch.log(n_samples)  # each sample 1/M
        return torch.exp(log_q) * n_samples
