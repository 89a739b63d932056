"""iBOT loss: masked-patch cross-entropy between student predictions and the teacher's unmasked tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, masks: Tensor, student_temp: float = 0.1) -> Tensor:
    """Cross-entropy on masked tokens, averaged within each image; the sum over images divided by ``B``.

    ``student_logits`` and ``teacher_probs`` are ``[M, K]`` for the masked tokens in the row-major
    order of ``masks[masks]`` (``masks`` is ``[B, N]`` bool, True = masked, one row per global crop).
    As in the DINOv2/v3 recipe the divisor is every global crop, masked or not, so with half of the
    crops masked the loss is half the mean over masked crops. With no masked token the loss is zero
    (and keeps the graph).
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    per_token = -(teacher_probs.float() * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)
    tokens_per_image = masks.sum(dim=1)
    image_of_token = torch.repeat_interleave(torch.arange(masks.shape[0], device=masks.device), tokens_per_image)
    weights = 1.0 / tokens_per_image[image_of_token].float()
    return (per_token * weights).sum() / masks.shape[0]
