"""Checkpoint RNG state: plain JSON numbers that restore every generator a worker draws from."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from pipelines.train.checkpoint import rng_state, set_rng_state


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.standard_normal(3).tolist(), [random.gauss(0, 1) for _ in range(3)]


def test_rng_state_round_trips_through_json_and_restores_every_generator():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal(1), random.gauss(0, 1)  # leave a cached Gaussian in both
    saved = json.loads(json.dumps(rng_state()))
    expected = draws()
    draws()
    set_rng_state(saved)
    assert draws() == expected
