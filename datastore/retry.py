"""The one retry policy for object storage, and the count of retries a process made.

``RetryConfig`` sits inside every ``ObjectStoreConfig`` (``<job>.storage.retries`` or
``data.store.retries``) and is translated for each client there: botocore's retry mode and attempts
(boto3, s3fs/zarr, and MLflow's artifact uploads through ``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS``),
the AWS C++ SDK's standard strategy (pyarrow: manifest, shards, checkpoints, Ray Data reads) and s3fs's
own loop around body reads. Each client backs off exponentially with jitter on throttling (503
SlowDown), server errors (500) and dropped connections. A body cut short after its response arrived is
not the client's to retry: ``retrying`` redoes such a whole-object operation with the same bounds.

``RETRIES`` counts, per process, the requests boto3 and s3fs clients built here sent again and the
whole-object operations ``retrying`` redid; jobs report it (pyarrow's own retries are invisible to Python).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryConfig:
    """Bounded retries with exponential backoff and full jitter, the same for every client."""

    max_attempts: int = 6  # per request, the first included
    mode: Literal["standard", "adaptive"] = "standard"  # botocore: adaptive also rate-limits the client
    backoff_base_s: float = 0.1  # whole-object retries wait U(0, min(cap, base * 2**retry))
    backoff_cap_s: float = 20.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # a stalled request fails (and is retried) after this long

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"retries.max_attempts must be at least 1, got {self.max_attempts}")
        if self.mode not in ("standard", "adaptive"):
            raise ValueError(f"retries.mode must be 'standard' or 'adaptive', got {self.mode!r}")
        if min(self.backoff_base_s, self.backoff_cap_s, self.connect_timeout_s, self.read_timeout_s) <= 0:
            raise ValueError("retries: backoff and timeouts must be positive")

    def botocore_config(self, **extra):
        """botocore's ``Config`` for boto3 and s3fs clients."""
        import botocore.config

        return botocore.config.Config(retries={"mode": self.mode, "total_max_attempts": self.max_attempts},
                                      connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s, **extra)

    def environment(self) -> dict[str, str]:
        """The variables botocore reads for clients built elsewhere (MLflow's artifact store)."""
        return {"AWS_RETRY_MODE": self.mode, "AWS_MAX_ATTEMPTS": str(self.max_attempts)}

    def export(self) -> None:
        """Set ``environment()`` in this process, so that MLflow's S3 uploads and downloads retry alike."""
        os.environ.update(self.environment())

    def backoff(self, retry: int) -> float:
        return random.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** retry))


class RetryCounter:
    """Requests sent again in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


RETRIES = RetryCounter()


def count_retries(events) -> None:
    """Count the resent requests of botocore clients made with ``events`` (a session's event system):
    every attempt emits ``before-send``, every operation one ``before-call``."""
    events.register("before-call.s3", lambda **_: RETRIES.add(-1), unique_id="braindino-retries-call")
    events.register("before-send.s3", lambda **_: RETRIES.add(1), unique_id="braindino-retries-send")


class StoreUnavailable(OSError):
    """An object-store request that still failed after its retries; names the object and the last error."""


def store_errors() -> tuple[type[BaseException], ...]:
    """What the clients raise once their retries are spent: pyarrow and s3fs ``OSError``s, botocore's
    errors, aiohttp's (an s3fs body cut short)."""
    import aiohttp
    import botocore.exceptions

    return OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, aiohttp.ClientError


def body_errors() -> tuple[type[BaseException], ...]:
    """A response body cut short or stalled: botocore returned the response, so its retries do not cover it."""
    import botocore.exceptions as be

    return (be.ResponseStreamingError, be.IncompleteReadError, be.ReadTimeoutError, be.ConnectionClosedError,
            be.EndpointConnectionError)


def retrying(policy: RetryConfig, what: str, operation: Callable[[], T],
             transient: tuple[type[BaseException], ...]) -> T:
    """``operation()``, redone after a ``transient`` error up to ``policy.max_attempts`` times in all; then
    ``StoreUnavailable`` naming ``what`` (the object) and the last error."""
    for attempt in range(policy.max_attempts):
        try:
            return operation()
        except transient as err:
            if attempt + 1 == policy.max_attempts:
                raise StoreUnavailable(f"{what}: failed after {policy.max_attempts} attempts "
                                       f"(storage.retries.max_attempts); last error: {describe(err)}") from err
            RETRIES.add(1)
            time.sleep(policy.backoff(attempt))
    raise AssertionError("unreachable")


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
