"""EMA teacher update."""

import copy

import pytest
import torch

from braindino.ssl import ema_update


def pair():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    return teacher, student


def test_one_update_is_the_convex_combination():
    teacher, student = pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s, rtol=0, atol=1e-7)


def test_momentum_one_freezes_the_teacher_and_zero_copies_the_student():
    teacher, student = pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=1.0)
    assert all(torch.equal(t, t0) for t, t0 in zip(teacher.parameters(), before))
    ema_update(teacher, student, momentum=0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_update_is_in_place_and_outside_autograd_even_with_gradients_enabled():
    """A frozen teacher following a student that requires grad must stay a leaf without history: an update
    recorded by autograd would tie the teacher into the student's graph (and keep it alive)."""
    teacher, student = pair()
    teacher.requires_grad_(False)
    storage = [p.data_ptr() for p in teacher.parameters()]
    with torch.enable_grad():
        ema_update(teacher, student, momentum=0.5)
    assert storage == [p.data_ptr() for p in teacher.parameters()]
    assert all(p.is_leaf and p.grad_fn is None and not p.requires_grad for p in teacher.parameters())
    student(torch.randn(3, 4)).sum().backward()  # the student's own graph is unaffected
    assert all(p.grad is not None for p in student.parameters())


def test_mismatched_structures_are_named():
    teacher, _ = pair()
    with pytest.raises(ValueError, match="missing in teacher"):
        ema_update(teacher, torch.nn.Linear(4, 8), momentum=0.5)
