"""A fault-injecting HTTP proxy in front of an S3 endpoint: what a flaky object store does, on demand.

``FaultProxy`` listens on 127.0.0.1 and forwards every request to the upstream S3 server (moto's, in
the tests) byte for byte, streaming bodies both ways: plain and chunked uploads (including botocore's
and the AWS C++ SDK's ``aws-chunked`` payloads, relayed with their framing untouched), range GETs and
HEADs. ``Fault`` rules make it misbehave the way S3 does, per request class:

- ``slow_down`` / ``internal_error``: answer 503 SlowDown / 500 InternalError with S3's XML error
  body, forwarding nothing upstream;
- ``reset``: cut the connection (TCP reset) part-way through a body: an upload is cut before it
  reaches the store (S3 never keeps a partial PUT); a download is cut after a share of its bytes;
- ``delay``: wait before forwarding, as a stalled request does.

A rule fires by rate (a seeded draw per matching request), at most ``count`` times, within a window
of time after it is added, or any mix of these. Every fault injected is counted per request class
and kind. Requests are classified from method, path and query as S3 routes them; path-style
addressing only (what clients use against an endpoint URL on an IP address).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from http.client import HTTPConnection, HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

PIECE = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade", "expect"}
LIST_PARAMETERS = {"list-type", "prefix", "delimiter", "continuation-token", "max-keys", "marker", "start-after",
                   "encoding-type", "fetch-owner", "versions", "uploads", "key-marker", "version-id-marker",
                   "upload-id-marker", "max-uploads"}


class RequestClass(StrEnum):
    LIST = "list"  # ListObjects(V2), ListObjectVersions, ListMultipartUploads, ListParts, ListBuckets
    GET = "get"  # GetObject (ranged or not) and object sub-resources
    HEAD = "head"  # HeadObject, HeadBucket
    PUT = "put"  # PutObject, CopyObject, Create/CompleteMultipartUpload
    PART = "part"  # UploadPart, UploadPartCopy
    DELETE = "delete"  # DeleteObject(s), AbortMultipartUpload, DeleteBucket
    OTHER = "other"  # bucket configuration: CreateBucket, GetBucketLocation, ...


class FaultKind(StrEnum):
    SLOW_DOWN = "slow_down"
    INTERNAL_ERROR = "internal_error"
    RESET = "reset"
    DELAY = "delay"


ERRORS = {
    FaultKind.SLOW_DOWN: (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    FaultKind.INTERNAL_ERROR: (500, "Internal Server Error", "InternalError",
                               "We encountered an internal error. Please try again."),
}


def classify(method: str, target: str) -> tuple[RequestClass, str]:
    """The S3 operation class of a path-style request, and the ``bucket/key`` it addresses."""
    parsed = urlsplit(target)
    query = parse_qs(parsed.query, keep_blank_values=True)
    bucket, _, key = unquote(parsed.path).lstrip("/").partition("/")
    resource = f"{bucket}/{key}" if key else bucket
    method = method.upper()
    if method == "HEAD":
        return RequestClass.HEAD, resource
    if method == "GET":
        if key:
            return (RequestClass.LIST if "uploadId" in query else RequestClass.GET), resource
        return (RequestClass.LIST if set(query) <= LIST_PARAMETERS else RequestClass.OTHER), resource
    if method == "PUT":
        if key and "partNumber" in query and "uploadId" in query:
            return RequestClass.PART, resource
        return (RequestClass.PUT if key else RequestClass.OTHER), resource
    if method == "POST":
        if "delete" in query:
            return RequestClass.DELETE, resource
        return (RequestClass.PUT if key or not query else RequestClass.OTHER), resource  # key-less: POST form upload
    if method == "DELETE":
        return RequestClass.DELETE, resource
    return RequestClass.OTHER, resource


@dataclass(frozen=True)
class Fault:
    """One way to misbehave on some requests.

    ``on``: the request classes it applies to; ``rate``: the chance it fires on a matching request
    (drawn from a generator seeded with ``seed``); ``count``: fire at most this many times;
    ``after_s``/``for_s``: active only from ``after_s`` seconds after it is added, for ``for_s``
    seconds; ``key``: only requests whose ``bucket/key`` contains this text. ``delay_s`` is the wait
    of a ``delay``; ``cut_at`` the share of a body sent (or received) before a ``reset``.
    """

    kind: FaultKind
    on: frozenset[RequestClass]
    rate: float = 1.0
    count: int | None = None
    after_s: float = 0.0
    for_s: float | None = None
    key: str | None = None
    delay_s: float = 1.0
    cut_at: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultKind(self.kind))
        classes = (self.on,) if isinstance(self.on, str) else self.on
        object.__setattr__(self, "on", frozenset(RequestClass(c) for c in classes))
        if not 0.0 <= self.rate <= 1.0 or not 0.0 <= self.cut_at < 1.0:
            raise ValueError(f"rate must be in [0, 1] and cut_at in [0, 1), got {self.rate} and {self.cut_at}")


@dataclass
class _ActiveFault:
    fault: Fault
    added: float = field(default_factory=time.monotonic)
    fired: int = 0

    def __post_init__(self) -> None:
        self.draws = random.Random(self.fault.seed)

    def fires(self, request_class: RequestClass, resource: str, now: float) -> bool:
        f = self.fault
        if request_class not in f.on or (f.key is not None and f.key not in resource):
            return False
        if f.count is not None and self.fired >= f.count:
            return False
        elapsed = now - self.added
        if elapsed < f.after_s or (f.for_s is not None and elapsed >= f.after_s + f.for_s):
            return False
        if f.rate < 1.0 and self.draws.random() >= f.rate:
            return False
        self.fired += 1
        return True


class FaultProxy:
    """The proxy: ``start()`` returns its endpoint URL, ``inject``/``clear`` change its rules,
    ``injected`` and ``seen`` count what happened, ``stop()`` closes every connection."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"the upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._faults: list[_ActiveFault] = []
        self._injected: Counter[tuple[RequestClass, FaultKind]] = Counter()
        self._seen: Counter[RequestClass] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fault proxy is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()  # joins the connection threads
        self._thread.join()
        self._server = None

    def inject(self, *faults: Fault) -> None:
        """Add rules; the first that fires on a request decides its fate."""
        with self._lock:
            self._faults.extend(_ActiveFault(f) for f in faults)

    def clear(self) -> None:
        """Remove every rule (the counts stay)."""
        with self._lock:
            self._faults.clear()

    @contextlib.contextmanager
    def injecting(self, *faults: Fault) -> Iterator[FaultProxy]:
        """These rules while the block runs, then none."""
        self.inject(*faults)
        try:
            yield self
        finally:
            self.clear()

    def injected(self, kind: FaultKind | str | None = None, on: RequestClass | str | None = None) -> int:
        """How many faults were injected, optionally of one kind and/or on one request class."""
        with self._lock:
            return sum(n for (c, k), n in self._injected.items()
                       if (kind is None or k == kind) and (on is None or c == on))

    def counts(self) -> dict[str, dict[str, int]]:
        """Injected faults as ``{request class: {kind: count}}``."""
        with self._lock:
            table: dict[str, dict[str, int]] = {}
            for (c, k), n in sorted(self._injected.items()):
                table.setdefault(c.value, {})[k.value] = n
            return table

    def seen(self, on: RequestClass | str | None = None) -> int:
        """Requests received (faulted or not), optionally of one class."""
        with self._lock:
            return sum(n for c, n in self._seen.items() if on is None or c == on)

    def reset_counts(self) -> None:
        with self._lock:
            self._injected.clear()
            self._seen.clear()

    def _decide(self, request_class: RequestClass, resource: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            self._seen[request_class] += 1
            for active in self._faults:
                if active.fires(request_class, resource, now):
                    self._injected[request_class, active.fault.kind] += 1
                    return active.fault
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    proxy: FaultProxy

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every connection thread blocked on a keep-alive read so that it ends."""
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection is closed after this long
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.upstream: HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self.upstream is not None:
            self.upstream.close()

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            self._close_upstream()  # it may hold half a request

    def _serve(self) -> None:
        request_class, resource = classify(self.command, self.path)
        fault = self.server.proxy._decide(request_class, resource)
        if fault is None:
            self._forward()
        elif fault.kind is FaultKind.DELAY:
            time.sleep(fault.delay_s)
            self._forward()
        elif fault.kind is FaultKind.RESET:
            self._reset(fault.cut_at)
        else:
            self._drain()
            self._answer_error(fault.kind, resource)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _serve

    # -- request bodies -----------------------------------------------------------------------------
    def _request_body(self) -> Iterator[bytes]:
        """The request body as it arrived on the wire (chunked framing included), in pieces."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                yield size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self.rfile.readline(8192)) not in (b"\r\n", b"\n", b""):
                        yield trailer
                    yield b"\r\n"
                    return
                yield from self._read_exactly(size + 2)  # the chunk and its CRLF
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            piece = self.rfile.read(min(PIECE, remaining))
            if not piece:
                raise ConnectionResetError("the client closed the connection mid-body")
            remaining -= len(piece)
            yield piece

    def _body_length(self) -> int | None:
        declared = self.headers.get("x-amz-decoded-content-length") or self.headers.get("Content-Length")
        return int(declared) if declared else None

    def _drain(self) -> None:
        for _ in self._request_body():
            pass

    # -- forwarding ---------------------------------------------------------------------------------
    def _forward(self) -> None:
        response = self._send_upstream()
        self._relay_head(response)
        chunked = response.chunked
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif response.length is None and self.command != "HEAD" and response.status not in (204, 304):
            self.close_connection = True  # the body ends when the connection does
        self.end_headers()
        while piece := response.read(PIECE):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        if response.will_close:
            self._close_upstream()

    def _send_upstream(self) -> HTTPResponse:
        if self.upstream is None:
            self.upstream = HTTPConnection(*self.server.proxy.upstream, timeout=300)
        connection = self.upstream
        connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                connection.putheader(name, value)
        connection.endheaders()
        for piece in self._request_body():
            connection.send(piece)
        return connection.getresponse()

    def _relay_head(self, response: HTTPResponse) -> None:
        """The upstream status line and end-to-end headers (framing is the caller's to add)."""
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "transfer-encoding":
                self.send_header(name, value)

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- faults -------------------------------------------------------------------------------------
    def _answer_error(self, kind: FaultKind, resource: str) -> None:
        status, reason, code, message = ERRORS[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<Resource>/{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>").encode()
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self, cut_at: float) -> None:
        """Reset the connection part-way through a body: an upload's, before anything reaches the
        store; otherwise the response's, after ``cut_at`` of it (a HEAD is reset before any byte)."""
        if self.command in ("PUT", "POST"):
            cut, received = int(cut_at * (self._body_length() or 0)), 0
            for piece in self._request_body():
                received += len(piece)
                if received > cut:
                    break
        elif self.command != "HEAD":
            response = self._send_upstream()
            body = response.read()
            self._relay_head(response)
            if response.chunked:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: int(cut_at * len(body))])
            self._close_upstream()
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()  # linger 0: the peer gets a TCP reset, not an orderly close
        self.close_connection = True
