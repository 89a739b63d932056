"""The schedules each stage of ``configs/pretrain/base-gpu.yaml`` runs with, from the config alone (no GPU).

Expected values are the recipe's formulas written out here: stage 1 warms the lr up over 10 epochs and
decays it by cosine over its 125 000 iterations, warms the teacher temperature from 0.04 to 0.07 over
30 epochs, raises the EMA momentum from 0.992 to 1 and freezes the prototypes for one epoch; stage 2
(10 000 iterations) has its own short warm-up and cosine, and holds temperature, momentum and weight decay.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from braindino.config import load_config
from pipelines.train.config import PretrainConfig

BASE = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "base-gpu.yaml"
EPOCH = 1250  # data.iterations_per_epoch


def cosine(start: float, end: float, step: int, steps: int) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, steps) / steps))


def warmup_cosine(peak: float, final: float, step: int, warmup: int, steps: int) -> float:
    return peak * step / warmup if step < warmup else cosine(peak, final, step - warmup, steps - warmup)


def stage1(step: int) -> dict:
    n, peak = 125_000, 1e-3 * math.sqrt(64 * 8 / 1024)
    return {"lr": warmup_cosine(peak, peak * 1e-3, step, 10 * EPOCH, n),
            "weight_decay": cosine(0.04, 0.4, step, n),
            "teacher_temp": 0.04 + 0.03 * step / (30 * EPOCH) if step < 30 * EPOCH else 0.07,
            "momentum": cosine(0.992, 1.0, step, n),
            "freeze_prototypes": step < EPOCH}


def stage2(step: int) -> dict:
    n, peak = 10_000, 1e-3 * math.sqrt(16 * 8 / 1024)
    return {"lr": warmup_cosine(peak, peak * 1e-3, step, EPOCH, n), "weight_decay": 0.4, "teacher_temp": 0.07,
            "momentum": 0.999, "freeze_prototypes": False}


@pytest.fixture(scope="module")
def config() -> PretrainConfig:
    return load_config(PretrainConfig, BASE)


@pytest.mark.parametrize(("stage", "expected", "iterations"), [("stage1", stage1, 125_000), ("stage2", stage2, 10_000)])
def test_first_middle_and_last_step_of_each_stage_follow_the_recipe(config, stage, expected, iterations):
    assert config.stage(stage).iterations == iterations
    schedules = config.stage_schedules(stage)
    for step in (0, iterations // 2, iterations - 1):
        values = schedules.at(step)
        want = expected(step)
        for name in ("lr", "weight_decay", "teacher_temp", "momentum"):
            assert getattr(values, name) == pytest.approx(want[name], rel=1e-9, abs=1e-15), (stage, step, name)
        assert values.freeze_prototypes == want["freeze_prototypes"], (stage, step)


def test_stage2_starts_its_own_warmup_after_stage1_and_decays_within_its_iterations(config):
    assert config.first_step("stage2") == config.stage1.iterations  # the step counter continues across stages
    schedules = config.stage_schedules("stage2")
    peak = schedules.at(EPOCH).lr
    assert schedules.at(0).lr == 0.0 and peak == pytest.approx(stage2(EPOCH)["lr"])
    assert schedules.at(config.stage2.iterations - 1).lr < 0.01 * peak
