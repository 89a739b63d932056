"""Training schedules as small callables ``schedule(step) -> float``."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup_steps``, then cosine to ``final`` at ``total_steps``.

    With ``warmup_steps=0`` it is a plain cosine from ``peak`` to ``final``; after ``total_steps`` it stays at ``final``.
    """

    peak: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must lie in [0, total_steps={self.total_steps}]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (self.peak - self.warmup_start) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
        return self.final + 0.5 * (self.peak - self.final) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LinearWarmup:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps``, then constant at ``end``."""

    start: float
    end: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.warmup_steps


@dataclass
class ScheduleConfig:
    """Schedule hyper-parameters in epochs (the DINOv3 defaults); the peak lr comes from ``optim.scaled_lr``."""

    warmup_epochs: float = 10.0
    final_lr_fraction: float = 1e-3
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    teacher_temp_start: float = 0.04
    teacher_temp_end: float = 0.07
    teacher_temp_warmup_epochs: float = 30.0
    momentum_start: float = 0.992
    momentum_end: float = 1.0


@dataclass(frozen=True)
class TrainingSchedules:
    """The four schedules one pretraining run follows."""

    lr: WarmupCosine
    weight_decay: WarmupCosine
    teacher_temp: LinearWarmup
    momentum: WarmupCosine

    @classmethod
    def build(cls, config: ScheduleConfig, peak_lr: float, total_steps: int, steps_per_epoch: int) -> "TrainingSchedules":
        """Schedules for ``total_steps`` iterations of ``steps_per_epoch`` each (warm-ups clipped to the run)."""

        def epochs(n: float) -> int:
            return min(total_steps, round(n * steps_per_epoch))

        return cls(
            lr=WarmupCosine(peak_lr, peak_lr * config.final_lr_fraction, total_steps, epochs(config.warmup_epochs)),
            weight_decay=WarmupCosine(config.weight_decay_start, config.weight_decay_end, total_steps),
            teacher_temp=LinearWarmup(
                config.teacher_temp_start, config.teacher_temp_end, epochs(config.teacher_temp_warmup_epochs)
            ),
            momentum=WarmupCosine(config.momentum_start, config.momentum_end, total_steps),
        )
