"""DINO, iBOT, KoLeo and Gram losses against hand-written float64 references."""

import pytest
import torch

from braindino.ssl import dino_loss, gram_loss, ibot_loss, koleo_loss, resize_token_grid
from braindino.ssl.health import entropy
from tests.braindino.references import cross_entropy64, gram64, koleo64


def seeded(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_dino_loss_matches_a_pairwise_reference_without_same_view_pairs():
    n_global, n_local, batch, k, temp = 2, 3, 4, 6, 0.1
    student = seeded(n_global + n_local, batch, k, seed=1)
    teacher = torch.softmax(seeded(n_global, batch, k, seed=2), dim=-1)
    pairs = [(t, s) for t in range(n_global) for s in range(n_global + n_local) if s != t]
    expected = sum(cross_entropy64(teacher[t], student[s], temp) for t, s in pairs) / len(pairs)
    assert len(pairs) == 8
    assert dino_loss(student, teacher, temp).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_of_a_teacher_against_itself_is_its_entropy():
    logits = seeded(1, 5, 7, seed=3).expand(2, 5, 7)  # two identical views
    teacher = torch.softmax(logits / 0.1, dim=-1)
    assert dino_loss(logits, teacher, 0.1).item() == pytest.approx(entropy(teacher[0]).item(), rel=1e-5)


def test_dino_loss_needs_a_cross_view_pair():
    with pytest.raises(ValueError, match="cross-view pair"):
        dino_loss(seeded(1, 2, 3), torch.softmax(seeded(1, 2, 3), -1))


def test_ibot_loss_sums_per_image_means_over_every_global_crop_masked_or_not():
    masks = torch.tensor([[True, True, True, False], [False, False, False, False], [True, False, False, False]])
    student = seeded(4, 5, seed=4)
    teacher = torch.softmax(seeded(4, 5, seed=5), dim=-1)
    image_0 = cross_entropy64(teacher[:3], student[:3], 0.1)
    image_2 = cross_entropy64(teacher[3:], student[3:], 0.1)
    assert ibot_loss(student, teacher, masks, 0.1).item() == pytest.approx((image_0 + image_2) / 3, rel=1e-5)


def test_ibot_loss_is_zero_without_masked_tokens_and_keeps_the_graph():
    student = torch.zeros(0, 5, requires_grad=True)
    loss = ibot_loss(student, torch.zeros(0, 5), torch.zeros(2, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()


def test_koleo_matches_the_nearest_neighbour_log_distance():
    features = seeded(6, 4, seed=6)
    assert koleo_loss(features).item() == pytest.approx(koleo64(features), rel=1e-4)


def test_koleo_is_finite_in_value_and_gradient_on_duplicated_features():
    features = seeded(4, 8, seed=7)
    features = torch.cat([features, features[:2]]).requires_grad_()
    loss = koleo_loss(features)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(features.grad).all()


def test_koleo_prefers_spread_features():
    clustered = torch.ones(8, 4) + 0.01 * seeded(8, 4, seed=8)
    spread = seeded(8, 4, seed=9)
    assert koleo_loss(spread) < koleo_loss(clustered)


def test_gram_loss_is_zero_for_identical_features_and_matches_a_reference():
    student = seeded(2, 9, 8, seed=10)
    assert gram_loss(student, student.clone(), (3, 3), (3, 3)).item() == pytest.approx(0.0, abs=1e-7)
    teacher = seeded(2, 9, 8, seed=11)
    assert gram_loss(student, teacher, (3, 3), (3, 3)).item() == pytest.approx(gram64(student, teacher), rel=1e-5)


def test_gram_teacher_tokens_from_a_larger_grid_are_resized_to_the_student_grid():
    constant_rows = torch.arange(6.0).repeat_interleave(6).reshape(1, 36, 1).expand(1, 36, 3)
    resized = resize_token_grid(constant_rows, (6, 6), (3, 3))
    assert resized.shape == (1, 9, 3)
    assert torch.all(resized[0, :3] < resized[0, 3:6]) and torch.all(resized[0, 3:6] < resized[0, 6:])
    student = seeded(1, 9, 3, seed=12, ).requires_grad_()
    loss = gram_loss(student, seeded(1, 36, 3, seed=13), (3, 3), (6, 6))
    loss.backward()
    assert torch.isfinite(student.grad).all()
