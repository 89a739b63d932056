"""AdamW parameter groups and gradient rules for self-distillation.

Per parameter: lr multiplier ``layer_decay ** (depth + 1 - layer)`` where the patch embedding and the
CLS/register/mask tokens are layer 0, block ``i`` is layer ``i + 1``, and the final norm and heads are
layer ``depth + 1`` (multiplier 1); the patch embedding gets a further ``patch_embed_lr_multiplier``.
Biases, norms, LayerScale and the tokens get no weight decay. Groups carry ``lr_multiplier`` and
``wd_multiplier`` so ``apply_schedules`` can set each step's values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NO_DECAY_TOKENS = ("cls_token", "register_tokens", "mask_token")
PROTOTYPE_LAYER = "prototypes"


@dataclass
class OptimConfig:
    """AdamW and gradient settings (DINOv3 defaults; the paper states clip 3.0). The prototype freeze is a
    schedule of each stage (``ScheduleConfig.freeze_prototypes_epochs``)."""

    base_lr: float = 1e-3
    reference_batch_size: int = 1024
    layer_decay: float = 0.9
    patch_embed_lr_multiplier: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 3.0


def scaled_lr(batch_size: int, base_lr: float = 1e-3, reference_batch_size: int = 1024) -> float:
    """Peak learning rate ``base_lr * sqrt(batch_size / reference_batch_size)`` (global batch)."""
    return base_lr * math.sqrt(batch_size / reference_batch_size)


def backbone_layer(name: str, depth: int) -> int:
    """Layer index of a backbone parameter name (relative to the backbone)."""
    if name.startswith("patch_embed.") or name in NO_DECAY_TOKENS:
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


def _multipliers(name: str, param: Tensor, depth: int, config: OptimConfig) -> tuple[float, float]:
    layer = depth + 1
    lr_multiplier = 1.0
    if name.startswith("backbone."):
        local = name.removeprefix("backbone.")
        layer = backbone_layer(local, depth)
        if local.startswith("patch_embed."):
            lr_multiplier = config.patch_embed_lr_multiplier
    lr_multiplier *= config.layer_decay ** (depth + 1 - layer)
    no_decay = param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_TOKENS
    return lr_multiplier, 0.0 if no_decay else 1.0


def build_param_groups(network: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW groups for a network with a ``backbone`` (a ``VisionTransformer``) and any heads.

    Parameters sharing (lr multiplier, wd multiplier) share a group; each group lists its ``names``.
    Initial ``lr`` and ``weight_decay`` are the multipliers; call ``apply_schedules`` every step.
    Names are read as ``backbone.blocks.3...``: compile modules in place (``module.compile()``), which
    keeps parameter names, rather than wrapping the network in ``torch.compile``.
    """
    depth = network.backbone.config.depth
    groups: dict[tuple[float, float], dict] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        key = _multipliers(name, param, depth, config)
        group = groups.setdefault(
            key, {"params": [], "names": [], "lr_multiplier": key[0], "wd_multiplier": key[1], "lr": key[0], "weight_decay": key[1]}
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(network: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``build_param_groups(network, config)``."""
    return torch.optim.AdamW(build_param_groups(network, config), betas=config.betas)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set this step's lr and weight decay on every group, scaled by the group's multipliers."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
        group["weight_decay"] = weight_decay * group["wd_multiplier"]


def drop_prototype_gradients(network: nn.Module) -> None:
    """Drop the prototype layers' gradients so that AdamW skips them entirely (the prototype freeze)."""
    for name, param in network.named_parameters():
        if PROTOTYPE_LAYER in name.split("."):
            param.grad = None


def clip_gradients_per_module(network: nn.Module, max_norm: float) -> dict[str, Tensor]:
    """Clip each child module's gradients (backbone, each head) to ``max_norm``; returns pre-clip norms."""
    norms = {}
    for name, module in network.named_children():
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            norms[name] = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norms
