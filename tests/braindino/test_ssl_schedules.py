"""Schedules: warm-up then cosine, linear temperature warm-up, one stage's schedules and their values."""

import pytest

from braindino.ssl import HighResScheduleConfig, LinearWarmup, ScheduleConfig, TrainingSchedules, WarmupCosine


def test_warmup_cosine_rises_linearly_then_decays_to_final():
    schedule = WarmupCosine(peak=1.0, final=0.1, total_steps=110, warmup_steps=10)
    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)
    values = [schedule(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_without_warmup_can_increase():
    weight_decay = WarmupCosine(peak=0.04, final=0.4, total_steps=100)
    assert weight_decay(0) == pytest.approx(0.04)
    assert weight_decay(50) == pytest.approx(0.22)
    assert weight_decay(100) == pytest.approx(0.4)


def test_linear_warmup_then_constant():
    temp = LinearWarmup(start=0.04, end=0.07, warmup_steps=30)
    assert temp(0) == pytest.approx(0.04)
    assert temp(15) == pytest.approx(0.055)
    assert temp(30) == temp(1000) == pytest.approx(0.07)


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(peak=1.0, final=0.0, total_steps=5, warmup_steps=10)


def test_training_schedules_follow_the_recipe():
    schedules = TrainingSchedules.build(ScheduleConfig(), peak_lr=2e-3, total_steps=1000, steps_per_epoch=10)
    assert schedules.lr(100) == pytest.approx(2e-3)
    assert schedules.lr(1000) == pytest.approx(2e-6)
    assert (schedules.weight_decay(0), schedules.weight_decay(1000)) == pytest.approx((0.04, 0.4))
    assert (schedules.teacher_temp(0), schedules.teacher_temp(300)) == pytest.approx((0.04, 0.07))
    assert (schedules.momentum(0), schedules.momentum(1000)) == pytest.approx((0.992, 1.0))
    assert [schedules.at(step).freeze_prototypes for step in (0, 9, 10)] == [True, True, False]
    values = schedules.at(100)
    assert (values.lr, values.teacher_temp) == (schedules.lr(100), schedules.teacher_temp(100))


def test_high_resolution_stage_warms_up_briefly_decays_and_holds_the_teacher_targets():
    schedules = TrainingSchedules.build(HighResScheduleConfig(), peak_lr=1e-3, total_steps=80, steps_per_epoch=10)
    assert schedules.at(0).lr == 0.0 and schedules.at(10).lr == pytest.approx(1e-3)
    assert schedules.at(79).lr < 1e-5
    for step in (0, 40, 79):
        values = schedules.at(step)
        assert (values.teacher_temp, values.momentum, values.weight_decay) == pytest.approx((0.07, 0.999, 0.4))
        assert not values.freeze_prototypes


def test_warmups_are_clipped_to_short_runs():
    schedules = TrainingSchedules.build(ScheduleConfig(), peak_lr=1e-3, total_steps=50, steps_per_epoch=10)
    assert schedules.lr.warmup_steps == 50
    assert schedules.teacher_temp.warmup_steps == 50
    assert schedules.freeze_prototypes_steps == 10
