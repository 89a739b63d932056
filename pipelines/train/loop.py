"""The per-worker training loop of one stage: ``train_stage`` is Ray Train's ``train_loop_per_worker``.

Per iteration: next batch -> multi-crop (in the worker or already done by Ray Data) -> schedules ->
loss -> finite check on every rank -> backward -> prototype freeze -> per-module clipping -> AdamW ->
EMA teacher. Every ``checkpoint.every`` iterations all ranks write a distributed checkpoint and report
it; a restarted worker group resumes from the last one (step counter and data position continue).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from braindino.models.vit import VisionTransformer
from braindino.augment import MultiCropBatch
from braindino.optim import apply_schedules, build_optimizer, cancel_prototype_gradients, clip_gradients_per_module
from braindino.ssl import SelfDistillation, TrainingSchedules
from pipelines.train.checkpoint import TrainState, load_backbone_weights, load_checkpoint, save_checkpoint
from pipelines.train.config import PretrainConfig
from pipelines.train.data import BatchMaker, DataPosition, ProbeSet, resize_square, worker_batches
from pipelines.train.parallelize import parallelize, world_mesh
from braindino.evaluation import knn_accuracy, pca_rgb
from pipelines.train.tracking import RunLogger, collapse_threshold, log, pca_figure

warnings.filterwarnings("ignore", message=".*returned a view tensor.*")


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


def _all_finite(value: torch.Tensor) -> bool:
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(values)
    stacked = torch.stack([values[n].detach().float().reshape(()) for n in names])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist()))


def _plain(value: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


@dataclass
class StepResult:
    loss: torch.Tensor
    values: dict[str, torch.Tensor]  # loss terms and health signals (this rank)
    norms: dict[str, torch.Tensor]  # pre-clip gradient norm per student module
    schedule: dict[str, float]
    finite: bool = True


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
        global_batch = self.spec.batch_size_per_worker * world
        from braindino.optim import scaled_lr

        peak = scaled_lr(global_batch, self.config.optim.base_lr, self.config.optim.reference_batch_size)
        self.schedules = TrainingSchedules.build(self.config.schedules, peak, self.spec.iterations,
                                                 self.config.data.iterations_per_epoch)
        self.first = self.config.first_step(plan.stage)
        self.end = self.first + self.spec.iterations
        self.collapse_grace = round(self.config.eval.collapse_grace_epochs * self.config.data.iterations_per_epoch)
        self.freeze_steps = round(self.config.optim.freeze_prototypes_epochs * self.config.data.iterations_per_epoch)
        self.logger = RunLogger(plan.tracking_uri, plan.run_id, enabled=rank == 0)
        self.threshold = collapse_threshold(self.config.model.vit.embed_dim, self.config.eval.collapse_fraction)
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
                     state.data_epoch, state.batches_in_epoch)
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

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    # -- loop ----------------------------------------------------------------------------------------

    def run(self, shard, checkpoint) -> TrainState:
        state = self.restore(checkpoint)
        position = DataPosition(state.data_epoch, state.batches_in_epoch, state.samples_seen)
        batches = worker_batches(shard, self.config, self.spec, position)
        maker = self.batch_maker(state.step)
        every = self.config.checkpoint
        log_every = self.config.eval.log_every
        self.model.train()
        window_start, window_wait, window_steps = time.perf_counter(), position.wait_seconds, 0
        metrics: dict[str, float] = {}
        for step in range(state.step, self.end):
            local = step - self.first
            result = self.train_step(maker(next(batches)), step)
            if not result.finite:
                return self._diverged(state, step, result.values)
            values, norms, loss = result.values, result.norms, result.loss
            lr, wd, momentum, temp = (result.schedule[k] for k in ("lr", "weight_decay", "momentum", "teacher_temp"))
            self._fault_hook(step)
            state.step = step + 1
            state.data_epoch, state.batches_in_epoch = position.data_epoch, position.batches_in_epoch
            state.samples_seen = position.samples_seen
            window_steps += 1
            last = state.step == self.end
            if state.step % log_every == 0 or last:
                values.update({f"grad_norm_{k}": _plain(v) for k, v in norms.items()})
                metrics = _mean_over_ranks(values)
                elapsed = time.perf_counter() - window_start
                images = window_steps * self.spec.batch_size_per_worker * self.world
                metrics.update(lr=lr, weight_decay=wd, momentum=momentum, teacher_temp=temp,
                               images_per_s=images / elapsed, tokens_per_s=images * self.tokens_per_image / elapsed,
                               data_wait_fraction=(position.wait_seconds - window_wait) / elapsed,
                               stage=1.0 if self.plan.stage == "stage1" else 2.0, data_epoch=position.data_epoch)
                collapsed = local >= self.collapse_grace and metrics["student_feature_std"] < self.threshold
                metrics["collapse_warning"] = float(collapsed)
                if collapsed and self.rank == 0:
                    log.warning("step %d: student feature std %.4g is below the collapse threshold %.4g",
                                step, metrics["student_feature_std"], self.threshold)
                self.logger.metrics(metrics, step=step)
                window_start, window_wait, window_steps = time.perf_counter(), position.wait_seconds, 0
            if self.plan.probe is not None and (state.step % self.config.eval.every == 0 or last):
                self.evaluate(state.step)
            if state.step % every.every == 0 or last:
                self.checkpoint(state, {"loss": metrics.get("loss_total", float(loss.detach()))})
        return state

    def batch_maker(self, step: int = 0) -> BatchMaker:
        return BatchMaker(self.config, self.spec, self.device, seed=self.config.seed * 1000 + self.rank + step)

    def train_step(self, batch: MultiCropBatch, step: int) -> StepResult:
        """One optimisation step at global iteration ``step``; nothing is updated when the loss is not finite."""
        local = step - self.first
        schedule = {"lr": self.schedules.lr(local), "weight_decay": self.schedules.weight_decay(local),
                    "momentum": self.schedules.momentum(local), "teacher_temp": self.schedules.teacher_temp(local)}
        apply_schedules(self.optimizer, schedule["lr"], schedule["weight_decay"])
        loss, values = self.model(batch, teacher_temp=schedule["teacher_temp"])
        if not _all_finite(loss):
            return StepResult(loss.detach(), values, {}, schedule, finite=False)
        loss.backward()
        cancel_prototype_gradients(self.model.student, local, self.freeze_steps)
        norms = clip_gradients_per_module(self.model.student, self.config.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_teacher(schedule["momentum"])
        return StepResult(loss.detach(), values, norms, schedule)

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
        rgb = pca_rgb(out.patches[pick].cpu(), out.grid)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"pca_step{step:07d}.png"
            path.write_bytes(pca_figure(probe.images[pick], rgb))
            self.logger.artifact(path, "pca")


def train_stage(plan: StagePlan) -> None:
    """Ray Train entry point (``train_loop_per_worker``) for one stage."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device() if plan.config.workers.use_gpu else torch.device("cpu")
    trainer = StageTrainer(plan, device, context.get_world_rank(), context.get_world_size())
    trainer.run(ray.train.get_dataset_shard("train"), ray.train.get_checkpoint())
