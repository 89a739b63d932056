"""The per-worker training loop of one stage: ``train_stage`` is Ray Train's ``train_loop_per_worker``.

Per iteration: next batch -> multi-crop (in the worker or already done by Ray Data) -> the stage's
schedules at this iteration -> ``braindino.ssl.training_step``. Every ``eval.log_every`` iterations the
metrics, every ``eval.every`` the probe, every ``checkpoint.every`` a distributed checkpoint that all
ranks write and report; a restarted worker group resumes from the last one (step counter and data
position continue).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from braindino.augment import MultiCropBatch
from braindino.evaluation import knn_accuracy, patch_foreground, pca_rgb
from braindino.models.vit import VisionTransformer
from braindino.optim import build_optimizer
from braindino.ssl import ScheduleValues, SelfDistillation, StepResult, training_step
from pipelines.train.checkpoint import (
    TrainState,
    load_backbone_weights,
    load_checkpoint,
    save_checkpoint,
    upload_checkpoint,
)
from pipelines.train.config import PretrainConfig
from pipelines.train.data import BatchMaker, ProbeSet, resize_square, worker_batches
from pipelines.train.monitor import CollapseWatch, ThroughputWindow
from pipelines.train.parallelize import parallelize, world_mesh
from pipelines.train.run_log import RunLogger, log, pca_figure


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the last good state was checkpointed before stopping."""


@dataclass
class StagePlan:
    """What the driver hands each worker for one stage."""

    config: PretrainConfig
    stage: str
    run_id: str
    tracking_uri: str
    probe: ProbeSet | None = None
    init_from: object | None = None  # ray.train.Checkpoint of the previous stage (stage 2)


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(values)
    stacked = torch.stack([_plain(values[n]).detach().float().reshape(()) for n in names])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist()))


def _plain(value: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _due(step: int, every: int, last: bool) -> bool:
    """Whether an every-``every``-iterations action runs after iteration ``step`` (always after the last)."""
    return last or step % every == 0


@torch.no_grad()
def initialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW state for every parameter with a zero-lr step on zero gradients (weights unchanged).

    Frozen-for-now parameters (the prototypes) would otherwise have no state in early checkpoints, and a
    checkpoint must hold the same keys whenever it is taken so that any of them can be loaded.
    """
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


class StageTrainer:
    """One worker's view of one stage; ``run`` returns the final ``TrainState``."""

    def __init__(self, plan: StagePlan, device: torch.device, rank: int, world: int):
        self.plan, self.config, self.device, self.rank, self.world = plan, plan.config, device, rank, world
        self.spec = plan.config.stage(plan.stage)
        torch.manual_seed(self.config.seed + rank)
        np.random.seed(self.config.seed + rank)
        self.model = SelfDistillation(self.config.model)
        if plan.init_from is not None and self.spec.gram.weight > 0:
            with plan.init_from.as_directory() as directory:
                gram = VisionTransformer(self.config.model.vit)
                gram.load_state_dict(load_backbone_weights(directory, "teacher"))
            self.model.set_gram_teacher(gram, self.spec.gram)
        self.model.to(device)
        mesh = world_mesh(device.type)
        parallel = self.config.parallel
        parallelize(self.model.student, mesh, parallel, trainable=True)
        parallelize(self.model.teacher, mesh, parallel, trainable=False)
        if self.model.gram_teacher is not None:
            parallelize(self.model.gram_teacher, mesh, parallel, trainable=False)
        self.optimizer = build_optimizer(self.model.student, self.config.optim)
        initialise_optimizer_state(self.optimizer)
        self.schedules = self.config.stage_schedules(plan.stage, world)
        self.first = self.config.first_step(plan.stage)
        self.end = self.first + self.spec.iterations
        per_epoch = self.config.data.iterations_per_epoch
        self.collapse = CollapseWatch(self.config.model.vit.embed_dim, self.config.eval.collapse_fraction,
                                      round(self.config.eval.collapse_grace_epochs * per_epoch))
        self.logger = RunLogger(plan.tracking_uri, plan.run_id, enabled=rank == 0)
        crops = self.spec.crops
        patch = self.config.model.vit.patch_size
        self.tokens_per_image = (crops.n_global * (crops.global_size // patch) ** 2
                                 + crops.n_local * (crops.local_size // patch) ** 2)

    # -- state ---------------------------------------------------------------------------------------

    def restore(self, checkpoint) -> TrainState:
        if checkpoint is not None:  # a restart of this stage: everything, optimizer included
            with checkpoint.as_directory() as directory:
                state = load_checkpoint(directory, self.model, self.optimizer)
            log.info("rank %d resumed %s at step %d (data epoch %d, batch %d)", self.rank, state.stage, state.step,
                     state.data.data_epoch, state.data.batches_in_epoch)
            return state
        if self.plan.init_from is not None:  # stage 2 starts from the stage-1 networks, fresh optimizer
            with self.plan.init_from.as_directory() as directory:
                load_checkpoint(directory, self.model, None, parts=("student", "teacher"), restore_rng=False)
        return TrainState(stage=self.plan.stage, step=self.first, mlflow_run_id=self.plan.run_id)

    def checkpoint(self, state: TrainState, metrics: dict[str, float]) -> None:
        """Write this rank's part of a checkpoint and hand it to ``self.report`` (Ray Train by default)."""
        with tempfile.TemporaryDirectory(prefix="braindino-ckpt-") as directory:
            save_checkpoint(directory, self.model, self.optimizer, state)
            self.report({**metrics, "step": state.step, "diverged": int(state.diverged)}, directory)

    @staticmethod
    def report(metrics: dict, directory: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_upload_fn=upload_checkpoint)

    # -- loop ----------------------------------------------------------------------------------------

    def run(self, shard, checkpoint) -> TrainState:
        state = self.restore(checkpoint)
        batches = worker_batches(shard, self.config, self.spec, state.data)
        maker = self.batch_maker(state.step)
        window = ThroughputWindow(self.spec.batch_size_per_worker * self.world, self.tokens_per_image)
        self.model.train()
        metrics: dict[str, float] = {}
        for step in range(state.step, self.end):
            waiting = time.perf_counter()
            raw = next(batches)
            window.add_step(time.perf_counter() - waiting)
            schedule = self.schedules.at(step - self.first)
            result = self.train_step(maker(raw), step, schedule)
            if not result.finite:
                return self._diverged(state, step, result.metrics)
            self._fault_hook(step)
            state.step = step + 1
            last = state.step == self.end
            if _due(state.step, self.config.eval.log_every, last):
                metrics = self.log_metrics(step, result, schedule, window, state)
            if self.plan.probe is not None and _due(state.step, self.config.eval.every, last):
                self.evaluate(state.step)
            if _due(state.step, self.config.checkpoint.every, last):
                self.checkpoint(state, {"loss": metrics.get("loss_total", float(result.loss))})
        return state

    def batch_maker(self, step: int = 0) -> BatchMaker:
        return BatchMaker(self.config, self.spec, self.device, seed=self.config.seed * 1000 + self.rank + step)

    def train_step(self, batch: MultiCropBatch, step: int, schedule: ScheduleValues | None = None) -> StepResult:
        """One optimisation step at global iteration ``step`` (the stage's schedules at that iteration by default)."""
        schedule = schedule or self.schedules.at(step - self.first)
        return training_step(self.model, self.optimizer, batch, schedule, self.config.optim.clip_grad)

    def log_metrics(self, step: int, result: StepResult, schedule: ScheduleValues, window: ThroughputWindow,
                    state: TrainState) -> dict[str, float]:
        """Average this step's loss terms and health signals over ranks (a collective) and log them with the
        schedule values, the throughput window and the collapse watch; returns what was logged."""
        values = {**result.metrics, **{f"grad_norm_{k}": v for k, v in result.grad_norms.items()}}
        metrics = {**_mean_over_ranks(values), **schedule.as_metrics(), **window.read(),
                   "stage": 1.0 if self.plan.stage == "stage1" else 2.0, "data_epoch": state.data.data_epoch,
                   "iterations_done": state.step}  # what the driver's progress line follows
        collapsed = self.collapse.collapsed(step - self.first, metrics["student_feature_std"])
        metrics["collapse_warning"] = float(collapsed)
        if collapsed and self.rank == 0:
            log.warning("step %d: student feature std %.4g is below the collapse threshold %.4g",
                        step, metrics["student_feature_std"], self.collapse.threshold)
        self.logger.metrics(metrics, step=step)
        return metrics

    def _diverged(self, state: TrainState, step: int, values) -> TrainState:
        state.diverged = True
        message = (f"{self.plan.stage} diverged at step {step}: the loss is NaN/Inf "
                   f"(terms: { {k: float(v) for k, v in values.items() if k.startswith('loss_')} }). "
                   "The last good state is in the final checkpoint; lower optim.base_lr or raise "
                   "optim.clip_grad and resume from it.")
        if self.rank == 0:
            log.error(message)
            self.logger.tag("braindino.status", "diverged")
            self.logger.tag("braindino.diverged_message", message[:4000])
        self.checkpoint(state, {"loss": float("nan")})
        return state

    def _fault_hook(self, step: int) -> None:
        fault = self.config.fault
        if fault.at_step != step or fault.rank != self.rank or not fault.marker:
            return
        marker = Path(fault.marker)
        if marker.exists():
            return
        marker.write_text(f"fault injected at step {step}\n")
        raise RuntimeError(f"injected test fault on rank {self.rank} at step {step} (fault.marker={marker})")

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        """kNN sequence probe + PCA map on the teacher backbone; a collective (every rank runs the forward)."""
        probe = self.plan.probe
        images = resize_square(torch.tensor(probe.images), self.spec.crops.global_size).to(self.device)
        backbone = self.model.teacher.backbone
        out = backbone(images)
        features = torch.cat([out.cls, out.patches.mean(dim=1)], dim=-1).cpu()
        if self.rank != 0:
            return
        accuracy = knn_accuracy(features, probe.labels, probe.train, k=self.config.eval.knn_k)
        self.logger.metrics({"knn_probe_accuracy": accuracy}, step=step)
        count = min(self.config.data.pca_slices, len(probe.images))
        pick = np.linspace(0, len(probe.images) - 1, count).round().astype(int)
        rgb = pca_rgb(out.patches[pick].cpu(), out.grid, patch_foreground(probe.images[pick], out.grid))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"pca_step{step:07d}.png"
            path.write_bytes(pca_figure(probe.images[pick], rgb, [probe.records[i] for i in pick]))
            self.logger.artifact(path, "pca")


def train_stage(plan: StagePlan) -> None:
    """Ray Train entry point (``train_loop_per_worker``) for one stage."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device() if plan.config.workers.use_gpu else torch.device("cpu")
    trainer = StageTrainer(plan, device, context.get_world_rank(), context.get_world_size())
    trainer.run(ray.train.get_dataset_shard("train"), ray.train.get_checkpoint())
