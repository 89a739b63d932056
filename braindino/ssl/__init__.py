"""Self-distillation objective: losses, Sinkhorn-Knopp, EMA teacher, schedules, health signals, the step."""

from braindino.ssl.dino_loss import dino_loss
from braindino.ssl.gram import GramConfig, gram_loss, resize_token_grid
from braindino.ssl.ibot_loss import ibot_loss
from braindino.ssl.koleo import koleo_loss
from braindino.ssl.schedules import (
    HighResScheduleConfig,
    LinearWarmup,
    ScheduleConfig,
    ScheduleValues,
    TrainingSchedules,
    WarmupCosine,
)
from braindino.ssl.self_distillation import DistillationNetwork, SelfDistillation, SelfDistillationConfig
from braindino.ssl.sinkhorn_knopp import SinkhornKnopp
from braindino.ssl.step import StepResult, training_step
from braindino.ssl.teacher import ema_update

__all__ = [
    "DistillationNetwork",
    "GramConfig",
    "HighResScheduleConfig",
    "LinearWarmup",
    "ScheduleConfig",
    "ScheduleValues",
    "SelfDistillation",
    "SelfDistillationConfig",
    "SinkhornKnopp",
    "StepResult",
    "TrainingSchedules",
    "WarmupCosine",
    "dino_loss",
    "ema_update",
    "gram_loss",
    "ibot_loss",
    "koleo_loss",
    "resize_token_grid",
    "training_step",
]
