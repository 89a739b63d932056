"""Sinkhorn-Knopp centering: balanced prototype marginals, rows summing to one, float64 agreement."""

import torch

from braindino.ssl import SinkhornKnopp
from tests.braindino.references import reference_sinkhorn


def test_rows_sum_to_one_and_prototypes_are_balanced():
    logits = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    probs = SinkhornKnopp(n_iterations=3)(logits, temperature=0.5)
    assert torch.allclose(probs.sum(dim=1), torch.ones(64), atol=1e-5)
    column_mass = probs.sum(dim=0)
    assert torch.allclose(column_mass, torch.full((16,), 64 / 16), rtol=0.15)
    plain_softmax_mass = torch.softmax(logits / 0.5, dim=1).sum(0)
    assert column_mass.std() < plain_softmax_mass.std() / 2
    converged = SinkhornKnopp(n_iterations=50)(logits, temperature=0.5).sum(dim=0)
    assert torch.allclose(converged, torch.full((16,), 64 / 16), rtol=1e-3)


def test_matches_a_float64_reference():
    logits = torch.randn(32, 10, generator=torch.Generator().manual_seed(1))
    probs = SinkhornKnopp(n_iterations=3)(logits, temperature=0.07)
    expected = reference_sinkhorn(logits, 0.07, 3)
    assert torch.allclose(probs.double(), expected, atol=1e-5)


def test_extreme_logit_scales_stay_finite():
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(2)) * 100 + 50
    probs = SinkhornKnopp()(logits, temperature=0.04)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(dim=1), torch.ones(8), atol=1e-5)


def test_empty_input_returns_empty_targets():
    assert SinkhornKnopp()(torch.zeros(0, 5), temperature=0.1).shape == (0, 5)
