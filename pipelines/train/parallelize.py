"""Apply activation checkpointing, ``torch.compile`` and FSDP2 to the self-distillation networks.

The model library never sees any of this. One function, ``parallelize``, is applied identically to the
student, the EMA teacher and the Gram teacher, so every parameter has the same shard layout in all of
them and the EMA update stays rank-local (``braindino.ssl.teacher.ema_update`` works on shards).

Sharding units: each transformer block, then each module the objective calls directly (the backbone
and the two heads). ``SelfDistillation`` calls ``student.backbone`` and ``student.dino_head`` rather
than ``student.forward``, so those are the FSDP roots. Blocks reshard after their forward and gather
again for backward. The student's roots keep their parameters gathered until their backward: on an
H200 (torch 2.11, NCCL) resharding them after forward freed storage that their backward still read
("tensor ... data is not allocated yet"). The teachers never run a backward, so their roots reshard
after forward: left gathered, their parameters would be plain tensors when the shard-local EMA update
adds the student's DTensor shards to them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from braindino.models.vit import VisionTransformer
from pipelines.train.config import ParallelConfig


def world_mesh(device_type: str) -> DeviceMesh:
    """A 1-D mesh over every rank of the default process group (already set up by Ray Train or torchrun)."""
    return init_device_mesh(device_type, (torch.distributed.get_world_size(),))


def mixed_precision(config: ParallelConfig, device_type: str) -> MixedPrecisionPolicy:
    """bf16 parameters with fp32 gradient reduction on CUDA (GPU-only branch); full fp32 elsewhere."""
    if device_type == "cuda" and config.mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def parallelize(network: nn.Module, mesh: DeviceMesh, config: ParallelConfig, *, trainable: bool) -> nn.Module:
    """Shard ``network`` in place: a ``DistillationNetwork`` (backbone + heads) or a bare backbone.

    ``trainable`` enables activation checkpointing (only the student runs a backward). Parameter names
    are unchanged, so state dicts and the EMA pairing do not depend on these options.
    """
    backbone = network if isinstance(network, VisionTransformer) else network.backbone
    policy = mixed_precision(config, mesh.device_type)
    if trainable and config.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in backbone.blocks:
            checkpoint(block)
    if config.compile:
        for block in backbone.blocks:
            block.compile()
    for block in backbone.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    roots = [backbone] if network is backbone else [backbone, network.dino_head, network.ibot_head]
    for module in roots:
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=not trainable)
    return network
