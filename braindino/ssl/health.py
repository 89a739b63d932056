"""Training-health signals: is the teacher confident but balanced, are the features collapsing?"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the rows of ``probs`` ``[M, K]``."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


def kl_to_uniform(probs: Tensor) -> Tensor:
    """Mean ``KL(p || uniform) = log K - H(p)``: 0 for a uniform (uninformative) teacher."""
    return math.log(probs.shape[-1]) - entropy(probs)


def feature_std(features: Tensor) -> Tensor:
    """Per-dimension std over the batch of L2-normalised features, averaged over dimensions.

    About ``1/sqrt(D)`` for features spread over the sphere, 0 when every sample maps to the same point.
    """
    return F.normalize(features.float(), dim=-1).std(dim=0).mean()


def prototype_usage(probs: Tensor) -> Tensor:
    """Fraction of prototypes that are the arg-max for at least one row of ``probs`` ``[M, K]``."""
    used = torch.zeros(probs.shape[-1], dtype=torch.bool, device=probs.device)
    used[probs.argmax(dim=-1)] = True
    return used.float().mean()


@torch.no_grad()
def health_metrics(teacher_probs: Tensor, student_features: Tensor) -> dict[str, Tensor]:
    """Health scalars (0-dim tensors, no host sync) from teacher targets ``[M, K]`` and student CLS ``[B, D]``."""
    return {
        "teacher_entropy": entropy(teacher_probs),
        "teacher_kl_to_uniform": kl_to_uniform(teacher_probs),
        "student_feature_std": feature_std(student_features),
        "prototype_usage": prototype_usage(teacher_probs),
    }
