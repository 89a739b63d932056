"""Code paths that run under torch.distributed: sharded (DTensor) EMA and cross-rank Sinkhorn-Knopp."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from braindino.ssl import SinkhornKnopp, ema_update
from tests.distributed import join_gloo, spawn_ranks

pytestmark = pytest.mark.timeout(120)

K, TEMPERATURE = 8, 0.1
# rows per rank: uneven, and one rank with no rows at all (each alone would be normalised differently)
SPLITS = [(5, 0), (0, 7), (3, 9)]


def shard_parameters(module: torch.nn.Module, mesh) -> torch.nn.Module:
    """Replace every parameter by a DTensor sharded on dim 0, as FSDP2 stores them."""
    for submodule in module.modules():
        for name, param in list(submodule.named_parameters(recurse=False)):
            sharded = distribute_tensor(param.detach(), mesh, [Shard(0)])
            setattr(submodule, name, torch.nn.Parameter(sharded, requires_grad=param.requires_grad))
    return module


def test_ema_updates_sharded_parameters_in_place(gloo_rank):
    mesh = init_device_mesh("cpu", (1,))
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    expected = [0.9 * t.detach() + 0.1 * s.detach() for t, s in zip(teacher.parameters(), student.parameters())]
    shard_parameters(student, mesh)
    shard_parameters(teacher, mesh)
    ema_update(teacher, student, momentum=0.9)
    for param, value in zip(teacher.parameters(), expected):
        assert isinstance(param, DTensor)
        torch.testing.assert_close(param.full_tensor(), value)


def all_rows(n_rows: int, case: int) -> torch.Tensor:
    return torch.randn(n_rows, K, generator=torch.Generator().manual_seed(case)) * 3


def _sinkhorn_worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo(rank, world, port)
    results = []
    for case, split in enumerate(SPLITS):
        logits = all_rows(sum(split), case)
        start = sum(split[:rank])
        results.append(SinkhornKnopp()(logits[start:start + split[rank]], TEMPERATURE))
    torch.save(results, f"{out}.rank{rank}")
    dist.destroy_process_group()


def test_sinkhorn_over_two_ranks_with_uneven_and_empty_shares_equals_one_process_on_all_rows(tmp_path):
    out = str(tmp_path / "targets")
    spawn_ranks(_sinkhorn_worker, 2, out)
    per_rank = [torch.load(f"{out}.rank{rank}") for rank in range(2)]
    for case, split in enumerate(SPLITS):
        logits = all_rows(sum(split), case)
        together = torch.cat([per_rank[0][case], per_rank[1][case]])
        assert [len(per_rank[rank][case]) for rank in range(2)] == list(split)
        torch.testing.assert_close(together, SinkhornKnopp()(logits, TEMPERATURE), msg=f"split {split}")
    first, second = all_rows(12, 2).split([3, 9])  # each rank on its own rows would give other targets
    assert not torch.allclose(SinkhornKnopp()(first, TEMPERATURE), per_rank[0][2], atol=1e-3)
