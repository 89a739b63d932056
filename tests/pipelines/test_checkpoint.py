"""Checkpoint state files: RNG state as plain JSON numbers that restore every generator a worker draws from, and
``train_state.json`` (layout 2, version 1 upgraded on read)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pipelines.train.checkpoint import DataPosition, TrainState, rng_state, set_rng_state


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


def test_train_state_round_trips_and_a_version_1_file_reads_into_the_same_state(tmp_path):
    state = TrainState(stage="stage2", step=130, data=DataPosition(data_epoch=3, batches_in_epoch=7, samples_seen=2096),
                       mlflow_run_id="abc", world_size=4)
    state.write(tmp_path)
    assert TrainState.read(tmp_path) == state
    version_1 = {"stage": "stage2", "step": 130, "data_epoch": 3, "batches_in_epoch": 7, "samples_seen": 2096,
                 "mlflow_run_id": "abc", "world_size": 4, "diverged": False, "version": 1}
    (tmp_path / "train_state.json").write_text(json.dumps(version_1))
    assert TrainState.read(tmp_path) == state
    (tmp_path / "train_state.json").write_text(json.dumps({**version_1, "version": 7}))
    with pytest.raises(ValueError, match="layout version 7"):
        TrainState.read(tmp_path)
