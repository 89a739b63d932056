"""Projection head and the prototype-count rule."""

import pytest
import torch

from braindino.models import HeadConfig, ProjectionHead, prototypes_for_dataset


def test_head_maps_tokens_to_prototype_logits_with_cosine_range():
    head = ProjectionHead(64, HeadConfig(n_prototypes=32, hidden_dim=48, bottleneck_dim=16))
    logits = head(torch.randn(5, 7, 64))
    assert logits.shape == (5, 7, 32)
    assert logits.abs().max() <= 1.0 + 1e-5
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 48), (48, 48), (48, 16)]


def test_plain_prototype_layer_is_an_unnormalised_linear_map():
    head = ProjectionHead(8, HeadConfig(n_prototypes=4, hidden_dim=8, bottleneck_dim=8, normalize_prototypes=False))
    with torch.no_grad():
        head.prototypes.weight.mul_(100)
    assert head(torch.randn(3, 8)).abs().max() > 1.0


def test_prototype_rule_scales_with_data_and_is_clamped():
    assert prototypes_for_dataset(6_600_000) == 65536
    assert prototypes_for_dataset(100_000) == 1024
    assert prototypes_for_dataset(120_000) == 2048
    assert prototypes_for_dataset(500) == 256
    with pytest.raises(ValueError):
        prototypes_for_dataset(0)
