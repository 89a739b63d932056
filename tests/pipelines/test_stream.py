"""The training stream makes progress on a cluster of any size, or says why not; a stall fails naming its stage."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from braindino.config import load_config
from pipelines.train.config import PretrainConfig
from pipelines.train.resources import ClusterTooSmall, DataResources, plan_data_resources
from pipelines.train.watchdog import DataStalled, StageRecord, StreamWatchdog, stuck_stage

TINY = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny-cpu.yaml"
FULL = ("read", "decode", "augment", "split")


def tiny(*overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, TINY, list(overrides))


def test_on_two_cores_the_tiny_run_leaves_one_core_to_read_and_augment():
    data = plan_data_resources(tiny(), {"CPU": 2.0})
    assert data == DataResources(read_cpus=0.5, augment_cpus=0.5, augment_actors=(1, 1))
    assert plan_data_resources(tiny("data.augment_on=worker"), {"CPU": 2.0}).read_cpus == 1.0


@pytest.mark.parametrize("cpus", [0.75, 1, 2, 3, 4, 8, 33, 96])
@pytest.mark.parametrize("workers,per_worker", [(1, 0.5), (2, 0.5), (2, 1.0), (4, 0.25), (8, 8.0)])
@pytest.mark.parametrize("augment_on", ["worker", "ray_data"])
def test_one_task_of_every_stage_always_fits_beside_the_workers(cpus, workers, per_worker, augment_on):
    config = tiny(f"workers.num_workers={workers}", f"workers.cpus_per_worker={per_worker}",
                  f"data.augment_on={augment_on}")
    held = workers * per_worker
    if held >= cpus:
        with pytest.raises(ClusterTooSmall, match="workers.cpus_per_worker"):
            plan_data_resources(config, {"CPU": float(cpus)})
        return
    data = plan_data_resources(config, {"CPU": float(cpus)})
    smallest = data.read_cpus + (data.augment_actors[0] * data.augment_cpus if augment_on == "ray_data" else 0)
    assert data.read_cpus > 0 and held + smallest <= cpus + 1e-9
    if augment_on == "ray_data":
        low, high = data.augment_actors
        assert data.augment_cpus > 0 and 1 == low <= high
        assert high * data.augment_cpus <= max(data.augment_cpus, (cpus - held) / 2) + 1e-9
    assert data.read_cpus <= 1.0 and data.augment_cpus <= 1.0


def test_a_cluster_too_small_is_refused_naming_what_is_short_and_what_to_set():
    with pytest.raises(ClusterTooSmall) as refused:
        plan_data_resources(tiny(), {"CPU": 1.0})
    message = str(refused.value)
    for fact in ("2 x 0.5 = 1 CPUs", "cluster's 1 CPUs", "workers.cpus_per_worker to at most 0.25", "augment"):
        assert fact in message, fact
    with pytest.raises(ClusterTooSmall, match="workers.use_gpu needs one GPU each; the cluster has 1"):
        plan_data_resources(tiny("workers.use_gpu=true"), {"CPU": 8.0, "GPU": 1.0})


def test_an_autoscaling_cluster_is_judged_by_what_it_can_grow_to():
    config = tiny("workers.num_workers=8", "workers.cpus_per_worker=8", "workers.use_gpu=true")
    head_only = {"CPU": 16.0}
    with pytest.raises(ClusterTooSmall, match="at most"):
        plan_data_resources(config, head_only, capacity={"CPU": 16.0 + 64.0, "GPU": 4.0})
    data = plan_data_resources(config, head_only, capacity={"CPU": 16.0 + 2 * 32.0, "GPU": 16.0})
    assert data.read_cpus == data.augment_cpus == 1.0 and data.augment_actors == (1, 8)


def records(**stages: StageRecord) -> dict[str, StageRecord]:
    return {name: stages.get(name, StageRecord()) for name in FULL}


@pytest.mark.parametrize("expected,stages", [
    # nothing was ever read (the F15 hang after the augmentation actor started)
    ("read", records(augment=StageRecord(actors=1))),
    # read delivered, the workers got all of it, then nothing more came
    ("read", records(read=StageRecord(rows_out=96, last_out=10), decode=StageRecord(rows_in=96, rows_out=96, last_out=10),
                     augment=StageRecord(rows_in=96, rows_out=96, last_out=11, last_start=10, actors=1),
                     split=StageRecord(rows_out=96, last_out=12))),
    # a decode call started before the wait and never returned
    ("decode", records(decode=StageRecord(rows_in=64, running={"c": 5.0}), augment=StageRecord(actors=1))),
    # Ray Data reads nothing until the first multi-crop actor is up
    ("augment", records()),
    # decoded rows wait in front of an idle multi-crop
    ("augment", records(read=StageRecord(rows_out=64, last_out=3), decode=StageRecord(rows_in=64, rows_out=64, last_out=3),
                        augment=StageRecord(actors=1))),
    # a multi-crop call hangs
    ("augment", records(decode=StageRecord(rows_in=64, rows_out=64, last_out=3),
                        augment=StageRecord(rows_in=32, actors=1, running={"c": 4.0}, last_start=4.0))),
    # the stream still produces but nothing reaches this worker
    ("split", records(read=StageRecord(rows_out=640, last_out=100), decode=StageRecord(rows_out=640, last_out=100),
                      augment=StageRecord(rows_in=640, rows_out=640, last_out=110, last_start=105, actors=1))),
])
def test_a_stall_is_named_by_the_stage_where_rows_stop(expected, stages):
    stall = stuck_stage(now=120.0, started=0.0, stages=stages, waited=60.0, pipeline=FULL, buffered=64)
    assert stall.stage == expected, stall


def test_without_ray_data_augmentation_split_follows_decode():
    stages = records(read=StageRecord(rows_out=64, last_out=100), decode=StageRecord(rows_out=64, last_out=100))
    assert stuck_stage(120.0, 0.0, stages, 60.0, ("read", "decode", "split"), buffered=64).stage == "split"


def test_the_watchdog_passes_items_and_raises_when_one_takes_longer_than_its_timeout():
    release = threading.Event()

    def source():
        yield from ("a", "b")
        release.wait()  # a stream that stops
        yield "never"

    watchdog = StreamWatchdog(timeout=0.5, pipeline=FULL, buffered=0)
    stream = watchdog.watch(source())
    assert list(itertools.islice(stream, 2)) == ["a", "b"]
    start = time.perf_counter()
    with pytest.raises(DataStalled, match=r"no batch reached this worker for 0\.[5-9] s \(data.stall_timeout_s=0.5\)"):
        next(stream)
    assert 0.5 <= time.perf_counter() - start < 5
    release.set()

    def failing():
        yield "a"
        raise OSError("shard unreadable")

    with pytest.raises(OSError, match="shard unreadable"):
        list(StreamWatchdog(timeout=5, pipeline=FULL, buffered=0).watch(failing()))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("augment_on,data,stage", [
    ("ray_data", DataResources(read_cpus=0.5, augment_cpus=64.0), "augment"),  # its actor can never start
    ("worker", DataResources(read_cpus=64.0, augment_cpus=0.0, augment_actors=(0, 0)), "read"),  # nor a read task
])
def test_a_real_stream_that_cannot_run_stops_a_worker_naming_the_stage(ray_session, ingested, tiny_config, tmp_path,
                                                                       augment_on, data, stage):
    from pipelines.train.data import build_dataset, shard_index
    from pipelines.train.watchdog import progress_actor

    config = tiny_config(tmp_path, f"data.augment_on={augment_on}", "data.stall_timeout_s=4", f"name=stall-{stage}")
    progress = progress_actor(config.name)
    stream = build_dataset(shard_index(ingested, config.data.store), config, config.stage1, data, progress)

    def first_batch(stream, config) -> str:  # as a worker does; the process exits after, with the stuck stream
        from pipelines.train.data import DataPosition, worker_batches
        from pipelines.train.watchdog import DataStalled

        start = time.perf_counter()
        try:
            next(worker_batches(stream, config, config.stage1, DataPosition()))
        except DataStalled as err:
            return f"{time.perf_counter() - start:.1f} {err}"
        return "a batch arrived"

    outcome = ray_session.get(ray_session.remote(num_cpus=0, max_calls=1)(first_batch).remote(stream, config))
    waited, message = outcome.split(" ", 1)
    assert f"the stream is stuck at {stage}: " in message and 4 <= float(waited) < 60, outcome
    ray_session.kill(progress)
