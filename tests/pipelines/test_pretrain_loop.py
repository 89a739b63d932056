"""The per-worker loop without Ray: one gloo rank, real ICBM152 slices, checkpoints handed to a recorder.

Covers what is awkward to provoke inside Ray Train: the NaN/Inf guard stops with a final checkpoint of
the last good state, and the step/data position recorded in checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from braindino.config import load_config
from braindino.volumes import PreprocessSpec
from infra.local.catalogue import slice_stack
from pipelines.train.checkpoint import TrainState, load_backbone_weights
from pipelines.train.config import PretrainConfig
from pipelines.train.loop import StagePlan, StageTrainer
from tests.conftest import real_scan

pytestmark = pytest.mark.timeout(300)
TINY = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def real_slices() -> torch.Tensor:
    real_scan("icbm2009c_t1")
    return torch.from_numpy(slice_stack(["icbm2009c_t1"], PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96)))


class InMemoryShard:
    """Stands in for Ray's dataset shard: shuffled batches of real slices, one pass per call."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def iter_torch_batches(self, batch_size, drop_last=True, local_shuffle_seed=0, **_):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(local_shuffle_seed))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield {"image": self.images[order[start:start + batch_size]]}


def _trainer(tmp_path, *overrides) -> tuple[StageTrainer, list]:
    config = load_config(PretrainConfig, TINY, ["workers.num_workers=1", "checkpoint.every=3", "data.augment_on=worker",
                                               *overrides])
    trainer = StageTrainer(StagePlan(config, "stage1", run_id="", tracking_uri=""), torch.device("cpu"), 0, 1)
    reports = []

    def record(metrics, directory):
        kept = tmp_path / f"ckpt{len(reports)}"
        shutil.copytree(directory, kept)
        reports.append((metrics, kept))

    trainer.report = record
    return trainer, reports


def test_loop_checkpoints_step_and_data_position(tmp_path, gloo_rank, real_slices):
    trainer, reports = _trainer(tmp_path, "stage1.iterations=6")
    state = trainer.run(InMemoryShard(real_slices), checkpoint=None)
    assert state.step == 6 and not state.diverged
    assert [m["step"] for m, _ in reports] == [3, 6]
    saved = TrainState.read(reports[-1][1])
    position = saved.data
    assert position.samples_seen == 6 * 8 and position.data_epoch * (len(real_slices) // 8) + position.batches_in_epoch == 6


def test_nan_loss_stops_with_a_final_checkpoint_of_the_last_good_state(tmp_path, gloo_rank, real_slices):
    trainer, reports = _trainer(tmp_path, "stage1.iterations=8")
    forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(batch, teacher_temp):
        loss, values = forward(batch, teacher_temp=teacher_temp)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 5 else loss), values

    trainer.model.forward = poisoned
    state = trainer.run(InMemoryShard(real_slices), checkpoint=None)
    assert state.diverged and state.step == 4
    metrics, directory = reports[-1]
    assert metrics["diverged"] == 1 and metrics["step"] == 4
    assert json.loads((directory / "train_state.json").read_text())["diverged"] is True
    assert all(torch.isfinite(v).all() for v in load_backbone_weights(directory, "student").values())
