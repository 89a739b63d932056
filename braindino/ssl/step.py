"""One optimisation step of self-distillation, the same for the training loop and the library's tests.

Schedules -> zero gradients -> loss -> finite check on every rank -> backward -> prototype freeze ->
per-module clipping -> AdamW -> EMA teacher. A loss that is NaN/Inf on any rank updates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from braindino.optim import apply_schedules, clip_gradients_per_module, drop_prototype_gradients
from braindino.ssl.schedules import ScheduleValues
from braindino.ssl.self_distillation import SelfDistillation


@dataclass
class StepResult:
    loss: Tensor  # detached
    metrics: dict[str, Tensor]  # loss terms and health signals of this rank (detached 0-dim tensors)
    grad_norms: dict[str, Tensor] = field(default_factory=dict)  # pre-clip norm per student module
    finite: bool = True


def finite_on_every_rank(value: Tensor) -> bool:
    """True when ``value`` is finite here and on every other rank of the default process group."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def training_step(model: SelfDistillation, optimizer: torch.optim.Optimizer, batch, schedule: ScheduleValues,
                  clip_grad: float) -> StepResult:
    """One step on a ``MultiCropBatch``; the optimizer's groups come from ``braindino.optim.build_optimizer``."""
    apply_schedules(optimizer, schedule.lr, schedule.weight_decay)
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = model(batch, teacher_temp=schedule.teacher_temp)
    if not finite_on_every_rank(loss):
        return StepResult(loss.detach(), metrics, finite=False)
    loss.backward()
    if schedule.freeze_prototypes:
        drop_prototype_gradients(model.student)
    norms = clip_gradients_per_module(model.student, clip_grad)
    optimizer.step()
    model.update_teacher(schedule.momentum)
    return StepResult(loss.detach(), metrics, norms)
