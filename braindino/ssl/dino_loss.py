"""DINO loss: cross-entropy of student CLS prototype scores against teacher targets over view pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dino_loss(student_logits: Tensor, teacher_probs: Tensor, student_temp: float = 0.1) -> Tensor:
    """Mean cross-entropy over every (teacher global view, student crop) pair except same-view pairs.

    ``student_logits`` is ``[S, B, K]`` with the ``T`` global crops first, in the teacher's view order,
    then the local crops; ``teacher_probs`` is ``[T, B, K]`` (e.g. Sinkhorn-Knopp targets). Each pair's
    cross-entropy is averaged over the batch, then the pairs are averaged.
    """
    n_student, n_teacher = student_logits.shape[0], teacher_probs.shape[0]
    if n_student < n_teacher:
        raise ValueError(f"student has {n_student} crops but the teacher {n_teacher} global views")
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    pair_ce = -torch.einsum("tbk,sbk->ts", teacher_probs.float(), log_probs) / student_logits.shape[1]
    same_view = torch.eye(n_teacher, n_student, dtype=torch.bool, device=pair_ce.device)
    n_pairs = n_teacher * n_student - n_teacher
    if n_pairs == 0:
        raise ValueError("DINO loss needs at least one cross-view pair (two global views or a local crop)")
    return pair_ce.masked_fill(same_view, 0.0).sum() / n_pairs
