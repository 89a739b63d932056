"""Code paths that run under torch.distributed: sharded (DTensor) EMA and cross-rank Sinkhorn-Knopp.

A one-process gloo group exercises the collectives and the DTensor branch without spawning workers.
"""

import copy
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from braindino.ssl import SinkhornKnopp, ema_update


@pytest.fixture
def process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def shard_parameters(module: torch.nn.Module, mesh) -> torch.nn.Module:
    """Replace every parameter by a DTensor sharded on dim 0, as FSDP2 stores them."""
    for submodule in module.modules():
        for name, param in list(submodule.named_parameters(recurse=False)):
            sharded = distribute_tensor(param.detach(), mesh, [Shard(0)])
            setattr(submodule, name, torch.nn.Parameter(sharded, requires_grad=param.requires_grad))
    return module


def test_ema_updates_sharded_parameters_in_place(process_group):
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    expected = [0.9 * t.detach() + 0.1 * s.detach() for t, s in zip(teacher.parameters(), student.parameters())]
    shard_parameters(student, process_group)
    shard_parameters(teacher, process_group)
    ema_update(teacher, student, momentum=0.9)
    for param, value in zip(teacher.parameters(), expected):
        assert isinstance(param, DTensor)
        torch.testing.assert_close(param.full_tensor(), value)


def test_sinkhorn_with_collectives_matches_the_single_process_result(process_group):
    logits = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    with_collectives = SinkhornKnopp()(logits, temperature=0.1)
    with mock.patch("braindino.ssl.sinkhorn_knopp._distributed", return_value=False):
        alone = SinkhornKnopp()(logits, temperature=0.1)
    torch.testing.assert_close(with_collectives, alone)
