"""Training schedules as small callables ``schedule(step) -> float``, and one stage's set of them.

Each training stage follows its own schedules, counted from the stage's first iteration. Lengths in a
``ScheduleConfig`` are in epochs of ``steps_per_epoch`` iterations and are clipped to the stage.
"""

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
    """One stage's schedules (lengths in epochs); these defaults are the DINOv2/v3 pretraining recipe.

    The peak lr is ``optim.scaled_lr`` of the stage's global batch; the lr warms up linearly from 0,
    then decays by cosine to ``final_lr_fraction`` of the peak at the stage's last iteration. Weight
    decay and EMA momentum follow a cosine from start to end over the stage, the teacher temperature a
    linear warm-up, and the prototype layers get no update for ``freeze_prototypes_epochs``.
    """

    warmup_epochs: float = 10.0
    final_lr_fraction: float = 1e-3
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    teacher_temp_start: float = 0.04
    teacher_temp_end: float = 0.07
    teacher_temp_warmup_epochs: float = 30.0
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    freeze_prototypes_epochs: float = 1.0


@dataclass
class HighResScheduleConfig(ScheduleConfig):
    """Defaults of the high-resolution stage (stage 2), which continues a trained stage 1.

    A short lr warm-up (the optimizer state starts afresh) then cosine decay within the stage; the
    teacher temperature held at its final 0.07; weight decay held at stage 1's final 0.4; no prototype
    freeze. The EMA momentum is held at 0.999 rather than continued: stage 1's cosine ends at 1.0, a
    teacher that no longer follows the student.
    """

    warmup_epochs: float = 1.0
    weight_decay_start: float = 0.4
    teacher_temp_start: float = 0.07
    teacher_temp_warmup_epochs: float = 0.0
    momentum_start: float = 0.999
    momentum_end: float = 0.999
    freeze_prototypes_epochs: float = 0.0


@dataclass(frozen=True)
class ScheduleValues:
    """What one iteration runs with."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    freeze_prototypes: bool

    def as_metrics(self) -> dict[str, float]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "momentum": self.momentum,
                "teacher_temp": self.teacher_temp, "prototypes_frozen": float(self.freeze_prototypes)}


@dataclass(frozen=True)
class TrainingSchedules:
    """The schedules of one stage; ``at(step)`` with ``step`` counted from the stage's first iteration."""

    lr: WarmupCosine
    weight_decay: WarmupCosine
    teacher_temp: LinearWarmup
    momentum: WarmupCosine
    freeze_prototypes_steps: int = 0

    @classmethod
    def build(cls, config: ScheduleConfig, peak_lr: float, total_steps: int, steps_per_epoch: int) -> "TrainingSchedules":
        """Schedules for a stage of ``total_steps`` iterations, ``steps_per_epoch`` each (warm-ups clipped to it)."""

        def epochs(n: float) -> int:
            return min(total_steps, round(n * steps_per_epoch))

        return cls(
            lr=WarmupCosine(peak_lr, peak_lr * config.final_lr_fraction, total_steps, epochs(config.warmup_epochs)),
            weight_decay=WarmupCosine(config.weight_decay_start, config.weight_decay_end, total_steps),
            teacher_temp=LinearWarmup(
                config.teacher_temp_start, config.teacher_temp_end, epochs(config.teacher_temp_warmup_epochs)
            ),
            momentum=WarmupCosine(config.momentum_start, config.momentum_end, total_steps),
            freeze_prototypes_steps=epochs(config.freeze_prototypes_epochs),
        )

    def at(self, step: int) -> ScheduleValues:
        return ScheduleValues(lr=self.lr(step), weight_decay=self.weight_decay(step), momentum=self.momentum(step),
                              teacher_temp=self.teacher_temp(step), freeze_prototypes=step < self.freeze_prototypes_steps)
