"""FSDP2 on gloo, outside Ray: two spawned processes shard the student and the teacher.

The EMA update on shards must equal the unsharded one, and a distributed checkpoint written by two
ranks must load on one rank with every weight (and the optimizer step) intact.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from braindino.augment import MultiCropBatch
from braindino.models.heads import HeadConfig
from braindino.models.vit import ViTConfig
from braindino.ssl import SelfDistillation, SelfDistillationConfig
from pipelines.train.config import ParallelConfig
from tests.distributed import join_gloo, spawn_ranks

pytestmark = pytest.mark.timeout(240)

HEAD = HeadConfig(n_prototypes=64, hidden_dim=64, bottleneck_dim=32)
MODEL = SelfDistillationConfig(vit=ViTConfig(size="micro"), dino_head=HEAD, ibot_head=HEAD)


def _batch(seed: int) -> MultiCropBatch:
    g = torch.Generator().manual_seed(seed)
    return MultiCropBatch(torch.randn(8, 1, 32, 32, generator=g), torch.randn(8, 1, 16, 16, generator=g),
                          torch.rand(8, 4, generator=g) < 0.3, n_global=2, n_local=2)


def _model() -> SelfDistillation:
    torch.manual_seed(0)
    model = SelfDistillation(MODEL)
    with torch.no_grad():  # a student that differs from the teacher, so the EMA has something to do
        for p in model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _sharded(model: SelfDistillation) -> SelfDistillation:
    from pipelines.train.parallelize import parallelize, world_mesh

    mesh = world_mesh("cpu")
    parallelize(model.student, mesh, ParallelConfig(), trainable=True)
    parallelize(model.teacher, mesh, ParallelConfig(), trainable=False)
    return model


def _full(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in module.state_dict().items()}


def _ema_worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo(rank, world, port)
    reference = _model()
    reference.update_teacher(0.9)
    model = _sharded(_model())
    model.update_teacher(0.9)
    full = _full(model.teacher)
    if rank == 0:
        expected = reference.teacher.state_dict()
        worst = max((full[k] - expected[k]).abs().max().item() for k in expected)
        torch.save({"worst": worst, "keys": sorted(full) == sorted(expected)}, out)
    dist.destroy_process_group()


def _save_worker(rank: int, world: int, port: int, directory: str, out: str) -> None:
    from braindino.optim import OptimConfig, build_optimizer
    from pipelines.train.checkpoint import DataPosition, TrainState, save_checkpoint

    join_gloo(rank, world, port)
    model = _sharded(_model())
    optimizer = build_optimizer(model.student, OptimConfig())
    for step in range(2):
        loss, _ = model(_batch(rank * 10 + step), teacher_temp=0.04)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_teacher(0.99)
    save_checkpoint(directory, model, optimizer, TrainState(step=2, data=DataPosition(samples_seen=16 * world)))
    student, teacher = _full(model.student), _full(model.teacher)
    if rank == 0:
        torch.save({"student": student, "teacher": teacher}, out)
    dist.destroy_process_group()


def _load_worker(rank: int, world: int, port: int, directory: str, out: str) -> None:
    from braindino.optim import OptimConfig, build_optimizer
    from pipelines.train.checkpoint import load_checkpoint

    join_gloo(rank, world, port)
    torch.manual_seed(123)
    model = _sharded(SelfDistillation(MODEL))
    optimizer = build_optimizer(model.student, OptimConfig())
    state = load_checkpoint(directory, model, optimizer)
    adam_steps = {float(s["step"]) for s in optimizer.state_dict()["state"].values()}
    torch.save({"student": _full(model.student), "teacher": _full(model.teacher), "step": state.step,
                "adam_steps": adam_steps}, out)
    dist.destroy_process_group()


def _options_worker(rank: int, world: int, port: int, out: str) -> None:
    from pipelines.train.parallelize import parallelize, world_mesh

    join_gloo(rank, world, port)
    results = {}
    for name, options in (("plain", ParallelConfig()), ("checkpointed_compiled",
                                                        ParallelConfig(activation_checkpointing=True, compile=True))):
        model = _model()
        mesh = world_mesh("cpu")
        parallelize(model.student, mesh, options, trainable=True)
        parallelize(model.teacher, mesh, options, trainable=False)
        loss, _ = model(_batch(0), teacher_temp=0.04)
        loss.backward()
        results[name] = {"loss": loss.item(), "grads": {n: p.grad.full_tensor().clone()
                                                        for n, p in model.student.named_parameters() if p.grad is not None}}
    torch.save(results, out)
    dist.destroy_process_group()


def test_sharded_ema_update_equals_unsharded(tmp_path):
    out = tmp_path / "ema.pt"
    spawn_ranks(_ema_worker, 2, str(out))
    result = torch.load(out)
    assert result["keys"]
    assert result["worst"] < 1e-6


def test_activation_checkpointing_and_compile_leave_loss_and_gradients_unchanged(tmp_path):
    out = tmp_path / "options.pt"
    spawn_ranks(_options_worker, 1, str(out))
    plain, optimised = torch.load(out).values()
    assert optimised["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert sorted(optimised["grads"]) == sorted(plain["grads"]) and len(plain["grads"]) > 20
    for name, grad in plain["grads"].items():
        torch.testing.assert_close(optimised["grads"][name], grad, atol=1e-4, rtol=1e-3, msg=name)


def test_checkpoint_saved_by_two_ranks_loads_on_one(tmp_path):
    from pipelines.train.checkpoint import load_backbone_weights

    directory, saved, loaded = tmp_path / "ckpt", tmp_path / "saved.pt", tmp_path / "loaded.pt"
    spawn_ranks(_save_worker, 2, str(directory), str(saved))
    assert {p.name for p in directory.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    spawn_ranks(_load_worker, 1, str(directory), str(loaded))
    before, after = torch.load(saved), torch.load(loaded)
    assert after["step"] == 2
    assert after["adam_steps"] == {2.0}
    for part in ("student", "teacher"):
        for key, value in before[part].items():
            assert torch.equal(after[part][key], value), f"{part}.{key} changed across 2 -> 1 workers"
    backbone = load_backbone_weights(directory, "teacher")
    for key, value in backbone.items():
        assert torch.equal(value, before["teacher"][f"backbone.{key}"])
