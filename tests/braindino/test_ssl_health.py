"""Health signals tell a confident, balanced teacher from a collapsed one."""

import math

import pytest
import torch

from braindino.ssl.health import entropy, feature_std, health_metrics, kl_to_uniform, prototype_usage


def test_uniform_teacher_has_maximal_entropy_and_zero_kl():
    probs = torch.full((4, 8), 1 / 8)
    assert entropy(probs).item() == pytest.approx(math.log(8))
    assert kl_to_uniform(probs).item() == pytest.approx(0.0, abs=1e-6)


def test_one_hot_teacher_has_zero_entropy_and_uses_its_prototypes():
    probs = torch.eye(8)[[0, 1, 1, 3]]
    assert entropy(probs).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(probs).item() == pytest.approx(math.log(8), abs=1e-5)
    assert prototype_usage(probs).item() == pytest.approx(3 / 8)


def test_feature_std_detects_collapse():
    collapsed = torch.ones(16, 32) + 1e-6 * torch.randn(16, 32)
    spread = torch.randn(256, 32)
    assert feature_std(collapsed).item() < 1e-3
    assert feature_std(spread).item() == pytest.approx(1 / math.sqrt(32), rel=0.1)


def test_health_metrics_are_detached_scalars():
    metrics = health_metrics(torch.softmax(torch.randn(4, 8), -1), torch.randn(4, 16, requires_grad=True))
    assert set(metrics) == {"teacher_entropy", "teacher_kl_to_uniform", "student_feature_std", "prototype_usage"}
    assert all(value.ndim == 0 and not value.requires_grad for value in metrics.values())
