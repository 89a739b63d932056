"""torch.distributed on gloo for tests: one rank in the test process, or ranks spawned as processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch.distributed as dist
import torch.multiprocessing as mp

from infra.local.services import free_port


def join_gloo(rank: int, world: int, port: int) -> None:
    """Join the gloo group of ``world`` ranks whose store listens on ``127.0.0.1:port``."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


@contextlib.contextmanager
def one_rank_group() -> Iterator[None]:
    """A one-rank gloo group in this process for the duration of the block."""
    join_gloo(0, 1, free_port())
    try:
        yield
    finally:
        dist.destroy_process_group()


def spawn_ranks(worker: Callable, world: int, *args) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` processes; each calls ``join_gloo`` itself."""
    mp.spawn(worker, args=(world, free_port(), *args), nprocs=world)
