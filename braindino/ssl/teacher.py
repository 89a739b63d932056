"""Exponential-moving-average teacher update."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor


def _local(tensor: Tensor) -> Tensor:
    """The rank-local shard of a DTensor (FSDP2 parameters), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place, for every parameter: ``t = momentum * t + (1 - momentum) * s``.

    Works on local shards when both modules are sharded identically (FSDP2 DTensors): no gather.
    Teacher and student must have the same parameter names in the same order.
    """
    teacher_named = dict(teacher.named_parameters())
    student_named = dict(student.named_parameters())
    if list(teacher_named) != list(student_named):
        missing = sorted(set(student_named) - set(teacher_named))
        extra = sorted(set(teacher_named) - set(student_named))
        raise ValueError(f"teacher and student differ: missing in teacher {missing}, extra in teacher {extra}")
    teacher_params = [_local(p) for p in teacher_named.values()]
    student_params = [_local(p).to(t.dtype) for p, t in zip(student_named.values(), teacher_params)]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
