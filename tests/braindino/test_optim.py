"""Parameter groups, lr scaling, prototype freezing and per-module clipping."""

import pytest
import torch

from braindino.models import HeadConfig, ViTConfig
from braindino.optim import (
    OptimConfig,
    apply_schedules,
    build_optimizer,
    build_param_groups,
    clip_gradients_per_module,
    drop_prototype_gradients,
    scaled_lr,
)
from braindino.ssl import DistillationNetwork, SelfDistillationConfig

DEPTH = 3


@pytest.fixture
def network():
    torch.manual_seed(0)
    head = HeadConfig(n_prototypes=16, hidden_dim=16, bottleneck_dim=8)
    return DistillationNetwork(SelfDistillationConfig(vit=ViTConfig(size="micro", depth=DEPTH), dino_head=head, ibot_head=head))


def lr_and_wd_by_name(network, lr=1.0, wd=1.0):
    optimizer = build_optimizer(network, OptimConfig())
    apply_schedules(optimizer, lr=lr, weight_decay=wd)
    return {name: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for name in g["names"]}


def test_layerwise_decay_puts_the_expected_lr_on_each_layer(network):
    lrs = {name: lr for name, (lr, _) in lr_and_wd_by_name(network, lr=2e-3).items()}
    assert lrs["backbone.patch_embed.proj.weight"] == pytest.approx(2e-3 * 0.2 * 0.9 ** (DEPTH + 1))
    assert lrs["backbone.cls_token"] == pytest.approx(2e-3 * 0.9 ** (DEPTH + 1))
    for block in range(DEPTH):
        assert lrs[f"backbone.blocks.{block}.attn.qkv.weight"] == pytest.approx(2e-3 * 0.9 ** (DEPTH - block))
    assert lrs["backbone.norm.weight"] == pytest.approx(2e-3)
    assert lrs["dino_head.mlp.0.weight"] == lrs["ibot_head.prototypes.weight"] == pytest.approx(2e-3)


def test_no_weight_decay_on_biases_norms_layerscale_and_tokens(network):
    wds = {name: wd for name, (_, wd) in lr_and_wd_by_name(network, wd=0.04).items()}
    for name in ["backbone.blocks.0.attn.proj.bias", "backbone.blocks.0.norm1.weight", "backbone.blocks.1.ls2.gamma",
                 "backbone.cls_token", "backbone.register_tokens", "backbone.mask_token", "backbone.norm.bias"]:
        assert wds[name] == 0.0, name
    for name in ["backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight", "dino_head.prototypes.weight"]:
        assert wds[name] == pytest.approx(0.04), name


def test_every_trainable_parameter_is_in_exactly_one_group(network):
    groups = build_param_groups(network, OptimConfig())
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in network.parameters())
    assert len(groups) == len({(g["lr_multiplier"], g["wd_multiplier"]) for g in groups})


def test_lr_scales_with_the_square_root_of_the_batch():
    assert scaled_lr(1024) == pytest.approx(1e-3)
    assert scaled_lr(256) == pytest.approx(5e-4)
    assert scaled_lr(4096, base_lr=2e-3) == pytest.approx(4e-3)


def test_dropping_prototype_gradients_freezes_only_the_prototypes(network):
    optimizer = build_optimizer(network, OptimConfig())
    apply_schedules(optimizer, lr=1e-2, weight_decay=0.04)
    prototypes = network.dino_head.prototypes.weight.detach().clone()
    qkv = network.backbone.blocks[0].attn.qkv.weight.detach().clone()
    for step in range(2):
        optimizer.zero_grad()
        network.dino_head(network.backbone(torch.randn(2, 1, 32, 32)).cls).sum().backward()
        if step == 0:
            drop_prototype_gradients(network)
        optimizer.step()
        if step == 0:
            assert torch.equal(network.dino_head.prototypes.weight, prototypes)
            assert not torch.equal(network.backbone.blocks[0].attn.qkv.weight, qkv)
    assert not torch.equal(network.dino_head.prototypes.weight, prototypes)


def test_gradients_are_clipped_per_module(network):
    network.dino_head(network.backbone(torch.randn(2, 1, 32, 32)).cls).pow(2).sum().mul(1e4).backward()
    norms = clip_gradients_per_module(network, max_norm=3.0)
    assert set(norms) == {"backbone", "dino_head"}  # the iBOT head got no gradient
    for name in norms:
        grads = [p.grad for p in getattr(network, name).parameters() if p.grad is not None]
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 3.0 + 1e-4
