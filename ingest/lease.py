"""A lease on an output root, kept in the store itself: one writer at a time, from any machine.

The lease is the object ``<root>/lease.json``: its owner and when it expires. Taking it is one atomic
conditional create (S3 ``If-None-Match: *``; in a local folder an exclusive create), so of two runs
started together exactly one gets it. The holder renews it while it works and deletes it when done.
A lease past its expiry (its holder died) is taken over by replacing exactly the version that was read
(S3 ``If-Match`` on its ETag), so two runs cannot both take over one expired lease.

    with hold_lease("s3://bucket/ingest", storage, owner="ingest 20260101T020000-ab12cd") as lease:
        ...            # lease.check() raises LeaseLost if another run took it over meanwhile
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from datastore.objectstore import ObjectStoreConfig

LEASE_NAME = "lease.json"
DEFAULT_TTL_S = 900.0


class LeaseHeld(RuntimeError):
    """Another run holds the lease."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it expired unrenewed); it must not write."""


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    renewed_at: float
    expires_at: float

    def describe(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
        return f"{self.owner} (until {stamp})"


class S3LeaseObject:
    """Conditional writes on one S3 object; the version token is its ETag."""

    def __init__(self, storage: ObjectStoreConfig, uri: str):
        self.client = storage.boto3_client()
        self.bucket, self.key = uri.removeprefix("s3://").split("/", 1)

    def create(self, body: bytes) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def replace(self, body: bytes, token: str) -> str | None:
        return self._put(body, IfMatch=token)

    def read(self) -> tuple[bytes, str] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return got["Body"].read(), got["ETag"]

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def _put(self, body: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except ClientError as err:
            # 412: the condition failed; 409: a concurrent conditional write won; 404: the object went away
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                              "NoSuchKey", "404", "409", "412"):
                return None
            raise


class LocalLeaseObject:
    """The same on a local file: exclusive create, and compare-and-swap under ``flock``."""

    def __init__(self, path: str):
        self.path = Path(path)

    def create(self, body: bytes) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        return _digest(body)

    def replace(self, body: bytes, token: str) -> str | None:
        with self._locked() as handle:
            if handle is None or _digest(handle.read()) != token:
                return None
            handle.seek(0)
            handle.truncate()
            handle.write(body)
            return _digest(body)

    def read(self) -> tuple[bytes, str] | None:
        with contextlib.suppress(FileNotFoundError):
            body = self.path.read_bytes()
            return body, _digest(body)
        return None

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self):
        try:
            handle = self.path.open("r+b")
        except FileNotFoundError:
            yield None
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield handle


class Lease:
    """The lease on ``root`` for ``owner``: ``acquire``, ``renew``, ``check``, ``release``."""

    def __init__(self, root: str, storage: ObjectStoreConfig, owner: str, ttl_s: float = DEFAULT_TTL_S):
        self.uri = f"{root.rstrip('/')}/{LEASE_NAME}"
        self.owner = f"{owner} on {socket.gethostname()} pid {os.getpid()}"
        self.ttl_s = ttl_s
        self.store = S3LeaseObject(storage, self.uri) if root.startswith("s3://") else LocalLeaseObject(
            self.uri.removeprefix("file://"))
        self.token: str | None = None
        self.lost: str | None = None
        self.took_over: LeaseRecord | None = None
        self._renewing = threading.Lock()  # the renewal thread and check() both renew

    def acquire(self) -> None:
        """Take the lease, or raise ``LeaseHeld`` naming its holder; an expired lease is taken over."""
        now = time.time()
        body = self._body(now)
        self.token = self.store.create(body)
        if self.token is not None:
            return
        current = self.store.read()
        if current is None:  # released between our create and read: one more try
            self.token = self.store.create(body)
            if self.token is None:
                raise LeaseHeld(f"{self.uri} was taken by another run just now")
            return
        record = LeaseRecord(**json.loads(current[0]))
        if record.expires_at > now:
            raise LeaseHeld(f"{self.uri} is held by {record.describe()}: another run is writing this output root")
        self.token = self.store.replace(body, current[1])
        if self.token is None:
            raise LeaseHeld(f"{self.uri} expired ({record.describe()}) and another run took it over first")
        self.took_over = record

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` ahead; a lease taken over meanwhile marks this one lost."""
        with self._renewing:
            if self.token is None or self.lost:
                return
            token = self.store.replace(self._body(time.time()), self.token)
            if token is None:
                current = self.store.read()
                holder = LeaseRecord(**json.loads(current[0])).describe() if current else "nobody"
                self.lost = f"{self.uri} was taken over by {holder}: this run's lease expired before it was renewed"
            else:
                self.token = token

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the lease (call it before committing)."""
        self.renew()
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Delete the lease if it is still this run's."""
        current = self.store.read()
        if self.token is not None and not self.lost and current is not None and current[1] == self.token:
            self.store.delete()
        self.token = None

    def _body(self, now: float) -> bytes:
        return json.dumps(asdict(LeaseRecord(self.owner, now, now + self.ttl_s))).encode()


@contextlib.contextmanager
def hold_lease(root: str, storage: ObjectStoreConfig, owner: str, ttl_s: float = DEFAULT_TTL_S) -> Iterator[Lease]:
    """Hold the lease on ``root`` while the block runs, renewing it every ``ttl_s / 3`` seconds."""
    lease = Lease(root, storage, owner, ttl_s)
    lease.acquire()
    stop = threading.Event()

    def keep_renewing() -> None:
        while not stop.wait(ttl_s / 3):
            lease.renew()

    renewer = threading.Thread(target=keep_renewing, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        lease.release()


def checking(lease: Lease, hook: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A stage hook (``run_ingest``'s ``fault_hook``) that first checks the lease is still this run's."""
    def at_stage(stage: str) -> None:
        lease.check()
        if hook is not None:
            hook(stage)

    return at_stage


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
