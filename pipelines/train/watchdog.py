"""Stall watchdog for the training stream: a worker that waits too long for a batch fails, naming the stuck stage.

The stream's stages report to one ``StreamProgress`` actor per run (it holds no CPU): rows reaching
decode (what was read), each decode and augment call as it starts and ends, and the rows each worker
receives (split). When a worker has waited ``data.stall_timeout_s`` for its next batch it raises
``DataStalled`` with ``stuck_stage``'s verdict, read from that record:

1. a decode or augment call that has run for the whole wait: that stage hangs;
2. no CPU multi-crop actor has started (Ray Data reads nothing until one has), or rows wait for the
   multi-crop while no augment call started during the wait: augment;
3. rows left the last stage during the wait, or more than the workers' buffers can hold never
   reached a worker: split (the stream runs, this worker gets nothing);
4. otherwise nothing arrives from upstream: read.

A stall is a worker failure like any other: Ray Train restarts the stage from its last checkpoint up
to ``checkpoint.max_failures`` times, then the run fails with this message.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

READ, DECODE, AUGMENT, SPLIT = "read", "decode", "augment", "split"
AUGMENT_BATCH = 32  # rows per CPU multi-crop call


class DataStalled(RuntimeError):
    """No batch reached a worker within ``data.stall_timeout_s``; the message names the stuck stage."""


@dataclass
class StageRecord:
    rows_in: int = 0
    rows_out: int = 0
    last_start: float | None = None  # wall time the last call started
    last_out: float | None = None  # wall time rows last came out
    running: dict[str, float] = field(default_factory=dict)  # call id -> start time
    largest_call: int = 0  # most rows one call took in (about a block)
    actors: int = 0  # actors of this stage that finished starting


class StreamProgress:
    """Rows in and out of each stage of one run's stream (a Ray actor: ``progress_actor``)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.stages = {name: StageRecord() for name in (READ, DECODE, AUGMENT, SPLIT)}

    def begin(self, stage: str, call: str, rows: int) -> None:
        now = time.time()
        record = self.stages[stage]
        record.rows_in += rows
        record.largest_call = max(record.largest_call, rows)
        record.last_start = now
        record.running[call] = now
        if stage == DECODE:  # decode runs in the read task: what it takes in is what was read
            self._out(READ, rows, now)

    def actor_started(self, stage: str) -> None:
        self.stages[stage].actors += 1

    def end(self, stage: str, call: str, rows: int) -> None:
        self.stages[stage].running.pop(call, None)
        self._out(stage, rows, time.time())

    def delivered(self, rows: int) -> None:
        self._out(SPLIT, rows, time.time())

    def snapshot(self) -> tuple[float, float, dict[str, StageRecord]]:
        """(now, when recording started, the records)."""
        return time.time(), self.started, self.stages

    def _out(self, stage: str, rows: int, now: float) -> None:
        record = self.stages[stage]
        record.rows_out += rows
        record.last_out = now


def progress_actor(run_name: str):
    """A fresh ``StreamProgress`` actor for ``run_name`` (replacing the one of a previous stage)."""
    import ray

    name = progress_actor_name(run_name)
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass
    return ray.remote(num_cpus=0)(StreamProgress).options(name=name).remote()


def progress_actor_name(run_name: str) -> str:
    return f"braindino-stream-progress:{run_name}"


def reported(progress, stage: str, rows: int, work: Callable[[], dict]) -> dict:
    """Run one ``stage`` call (``work``) on ``rows`` rows, reporting its start and its output rows."""
    if progress is None:
        return work()
    call = uuid.uuid4().hex
    progress.begin.remote(stage, call, rows)
    out = work()
    progress.end.remote(stage, call, len(next(iter(out.values()))) if out else 0)
    return out


@dataclass(frozen=True)
class Stall:
    stage: str
    detail: str


def stuck_stage(now: float, started: float, stages: dict[str, StageRecord], waited: float,
                pipeline: tuple[str, ...], buffered: int) -> Stall:
    """Where a stream that gave a worker nothing for ``waited`` seconds is stuck (rules in the module doc).

    ``pipeline`` lists the stages in order (read, decode[, augment], split); ``buffered`` is how many
    rows the workers' iterators may hold before one reaches the loop.
    """
    since = now - waited
    for name in pipeline:
        running = stages[name].running
        if running and min(running.values()) <= since:
            return Stall(name, f"one {name} call has been running for {now - min(running.values()):.0f} s")
    augment = stages[AUGMENT]
    if AUGMENT in pipeline and not augment.actors:  # Ray Data starts no read before its first actor is up
        return Stall(AUGMENT, f"no CPU multi-crop actor has started in {now - started:.0f} s (can one get its CPUs?)")
    if AUGMENT in pipeline:
        waiting = stages[DECODE].rows_out - augment.rows_in
        if waiting >= AUGMENT_BATCH and not augment.running and (augment.last_start or 0) <= since:
            return Stall(AUGMENT, f"{waiting} decoded rows wait for the CPU multi-crop and no augment call "
                                  f"started in {waited:.0f} s (can its actor get a CPU?)")
    last = stages[pipeline[-2]]
    undelivered = last.rows_out - stages[SPLIT].rows_out
    if (last.last_out or 0) > since or undelivered > buffered + 2 * last.largest_call:
        return Stall(SPLIT, f"{last.rows_out} rows left {pipeline[-2]} ({undelivered} not yet received by a worker), "
                            f"none reached this worker in {waited:.0f} s")
    read = stages[READ]
    idle = now - (read.last_out or started)
    return Stall(READ, f"no rows read for {idle:.0f} s ({read.rows_out} so far)"
                       + ("" if read.rows_out else ": can a read task get a CPU, and reach the shards?"))


class StreamWatchdog:
    """The worker side: counts delivered rows and explains a stall from the run's progress record."""

    def __init__(self, timeout: float, pipeline: tuple[str, ...], buffered: int, progress=None):
        self.timeout, self.pipeline, self.buffered, self.progress = timeout, pipeline, buffered, progress

    @classmethod
    def for_run(cls, run_name: str, timeout: float, pipeline: tuple[str, ...], buffered: int) -> StreamWatchdog:
        """Attach to the run's progress actor when the driver started one."""
        import ray

        try:
            progress = ray.get_actor(progress_actor_name(run_name)) if ray.is_initialized() else None
        except ValueError:
            progress = None
        return cls(timeout, pipeline, buffered, progress)

    def delivered(self, rows: int) -> None:
        if self.progress is not None:
            self.progress.delivered.remote(rows)

    def explain(self, waited: float) -> str:
        head = f"no batch reached this worker for {waited:.1f} s (data.stall_timeout_s={self.timeout:g})"
        if self.progress is None:
            return f"{head}; the stream's progress record is not available"
        import ray

        try:
            now, started, stages = ray.get(self.progress.snapshot.remote(), timeout=30)
        except Exception as err:  # the record itself is unreachable: say so rather than guess
            return f"{head}; the stream's progress record could not be read ({err!r})"
        stall = stuck_stage(now, started, stages, waited, self.pipeline, self.buffered)
        return f"{head}: the stream is stuck at {stall.stage}: {stall.detail}"

    def watch(self, source: Iterator) -> Iterator:
        """The items of ``source``, pulled on a thread so that a wait can time out.

        Raises ``DataStalled`` when an item takes longer than ``timeout`` (``<= 0``: wait forever).
        """
        items: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        done = object()

        def pull() -> None:
            try:
                for item in source:
                    if not _put(items, (item, None), stop):
                        return
                _put(items, (done, None), stop)
            except BaseException as err:  # handed to the consumer, which raises it
                _put(items, (None, err), stop)

        threading.Thread(target=pull, name="stream-watchdog", daemon=True).start()
        try:
            while True:
                start = time.perf_counter()
                try:
                    item, error = items.get(timeout=self.timeout if self.timeout > 0 else None)
                except queue.Empty:
                    raise DataStalled(self.explain(time.perf_counter() - start)) from None
                if error is not None:
                    raise error
                if item is done:
                    return
                yield item
        finally:
            stop.set()


def _put(items: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            items.put(entry, timeout=1.0)
            return True
        except queue.Full:
            continue
    return False
