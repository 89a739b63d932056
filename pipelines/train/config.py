"""``PretrainConfig``: the one typed tree a pretraining run is described by (``configs/pretrain/*.yaml``).

Everything a worker needs travels inside this object, so ``train_loop_per_worker`` takes no other
hidden inputs. Iteration counts are per stage, and so are the schedules (``stage1.schedules``,
``stage2.schedules``): each stage's lr, weight decay, teacher temperature, EMA momentum and prototype
freeze run from the stage's first iteration to its last. An "epoch" is ``data.iterations_per_epoch``
iterations and only scales the schedules' lengths (the run never depends on the dataset's length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from braindino.augment.config import MultiCropConfig
from braindino.models.vit import ViTConfig
from braindino.optim import OptimConfig, scaled_lr
from braindino.ssl.gram import GramConfig
from braindino.ssl.schedules import HighResScheduleConfig, ScheduleConfig, TrainingSchedules
from braindino.ssl.self_distillation import SelfDistillationConfig
from datastore.objectstore import ObjectStoreConfig
from pipelines.tracking import TrackingConfig


@dataclass
class MaskConfig:
    """iBOT block masking: a ratio drawn from ``ratio`` on a ``probability`` fraction of global crops."""

    ratio: tuple[float, float] = (0.1, 0.5)
    probability: float = 0.5


@dataclass
class StageConfig:
    """One training stage: length, batch, crops, masks, Gram anchoring and its own schedules (stage-1 defaults)."""

    iterations: int = 125000
    batch_size_per_worker: int = 32
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    gram: GramConfig = field(default_factory=GramConfig)
    schedules: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class HighResStageConfig(StageConfig):
    """Stage 2: larger crops, Gram anchoring to the stage-1 teacher, ``HighResScheduleConfig`` schedules.

    It starts from the stage-1 checkpoint; ``iterations: 0`` skips it.
    """

    iterations: int = 10000
    batch_size_per_worker: int = 16
    crops: MultiCropConfig = field(default_factory=lambda: MultiCropConfig(global_size=512, local_size=112))
    gram: GramConfig = field(default_factory=lambda: GramConfig(weight=1.0))
    schedules: HighResScheduleConfig = field(default_factory=HighResScheduleConfig)


@dataclass
class DataConfig:
    """Where the shards are (through the manifest) and where multi-crop runs.

    ``augment_on``: ``worker`` runs the batched augmentation on the training device (the GPU default),
    ``ray_data`` runs the CPU form inside the Ray Data pipeline before batches reach the workers.
    ``stall_timeout_s``: a worker that waits this long for a batch fails, naming the stuck stream
    stage (read, decode, augment, split); 0 waits forever.
    """

    manifest: str = ""
    store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    augment_on: Literal["worker", "ray_data"] = "worker"
    iterations_per_epoch: int = 1250
    shuffle_buffer: int = 2048
    prefetch_batches: int = 2
    probe_slices_per_class: int = 32
    pca_slices: int = 4
    stall_timeout_s: float = 600.0


@dataclass
class ParallelConfig:
    """Applied by ``pipelines.train.parallelize`` in this order: checkpointing, compile, FSDP2."""

    activation_checkpointing: bool = False
    compile: bool = False
    mixed_precision: Literal["bf16", "fp32"] = "bf16"  # only on CUDA; CPU always runs fp32


@dataclass
class WorkersConfig:
    num_workers: int = 1
    use_gpu: bool = True
    cpus_per_worker: float = 8.0
    placement_strategy: str = "PACK"  # Ray Train's: PACK fills nodes in turn; SPREAD one worker per node if it can


@dataclass
class CheckpointConfig:
    """Distributed checkpoints every ``every`` iterations, kept under ``storage_path`` (a path or s3://)."""

    storage_path: str = ".local/ray_results"
    every: int = 500
    num_to_keep: int = 2
    max_failures: int = 3


@dataclass
class EvalConfig:
    log_every: int = 10
    every: int = 1000
    knn_k: int = 10
    collapse_fraction: float = 0.25  # warn when feature std < fraction * 1/sqrt(D) (the spread-out value)
    collapse_grace_epochs: float = 1.0  # features start bunched at initialisation: watch from then on


@dataclass
class RegisterConfig:
    enabled: bool = True
    model_name: str = "braindino-encoder"
    alias: str = "candidate"


@dataclass
class FaultConfig:
    """Test-only: rank ``rank`` raises once at iteration ``at_step`` unless ``marker`` already exists."""

    at_step: int = -1
    rank: int = 1
    marker: str = ""


@dataclass
class PretrainConfig:
    name: str = "braindino-pretrain"
    seed: int = 0
    model: SelfDistillationConfig = field(default_factory=lambda: SelfDistillationConfig(vit=ViTConfig(drop_path_rate=0.1)))
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: HighResStageConfig = field(default_factory=HighResStageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.stage1.iterations <= 0:
            raise ValueError("stage1.iterations must be positive")
        if self.stage2.iterations > 0 and self.stage2.gram.weight <= 0:
            raise ValueError("stage2 anchors to the stage-1 teacher: set stage2.gram.weight > 0 (or iterations: 0)")

    def stage(self, name: str) -> StageConfig:
        if name not in ("stage1", "stage2"):
            raise ValueError(f"unknown stage {name!r}: use stage1 or stage2")
        return getattr(self, name)

    def stages(self) -> list[str]:
        return ["stage1"] + (["stage2"] if self.stage2.iterations > 0 else [])

    def first_step(self, name: str) -> int:
        """Iterations are counted across stages: stage 2 continues the stage-1 step counter."""
        return 0 if name == "stage1" else self.stage1.iterations

    def stage_schedules(self, name: str, world_size: int | None = None) -> TrainingSchedules:
        """The schedules of stage ``name`` on ``world_size`` workers (default ``workers.num_workers``).

        The peak lr is ``optim.base_lr * sqrt(global batch / optim.reference_batch_size)``.
        """
        stage = self.stage(name)
        world = self.workers.num_workers if world_size is None else world_size
        peak = scaled_lr(stage.batch_size_per_worker * world, self.optim.base_lr, self.optim.reference_batch_size)
        return TrainingSchedules.build(stage.schedules, peak, stage.iterations, self.data.iterations_per_epoch)
