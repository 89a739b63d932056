"""Object storage: one config for S3 (AWS, MinIO, Ceph, the local test server) and local disk.

Every client any job uses is built here, from one ``ObjectStoreConfig``: pyarrow's filesystem
(manifest tables, shards, checkpoints, Ray Data reads), boto3 (listings with ETags, uploads) and s3fs
(the zarr volume store). Each builder is the only place that translates the config for its client,
so settings every client must share (credentials, endpoint, region, the retry policy
``retries``: ``datastore.retry.RetryConfig``) are written in this module and nowhere else.

It lives in ``datastore`` rather than in the ingest job because every job uses it: ingest, training
(data and checkpoints), registration and the local services.

Credentials follow the standard AWS chain (environment, profile, instance role) unless the config
names keys; ``endpoint_url`` points the same code at any S3-compatible server.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from braindino.config import SECRET
from datastore.retry import RetryConfig, count_retries


@dataclass(frozen=True)
class ObjectStoreConfig:
    endpoint_url: str | None = None  # None: AWS itself
    region: str = "us-east-1"
    access_key: str | None = field(default=None, metadata=SECRET, repr=False)  # None: the standard credential chain
    secret_key: str | None = field(default=None, metadata=SECRET, repr=False)
    retries: RetryConfig = field(default_factory=RetryConfig)

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key and self.secret_key)

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """``s3://bucket/key`` or a local path -> (pyarrow filesystem, path within it)."""
        if uri.startswith("s3://"):
            return self.s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
        if "://" in uri and not uri.startswith("file://"):
            raise ValueError(f"unsupported storage URI {uri!r}: use s3://bucket/prefix or a local path")
        return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())

    def s3_filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's S3 client, with the retry policy; it keeps that policy when pickled to Ray workers."""
        return ConfiguredS3FileSystem(self)

    def boto3_client(self):
        """boto3's S3 client, with the retry policy and its retries counted (``datastore.retry.RETRIES``)."""
        import boto3

        session = boto3.session.Session()
        count_retries(session.events)
        return session.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                              aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                              config=self.retries.botocore_config())

    def fsspec_filesystem(self, asynchronous: bool = False):
        """s3fs's filesystem, built through fsspec's registry as zarr's own ``from_url`` does (a bare
        ``s3fs.S3FileSystem`` left its aiohttp session unclosed at exit); zarr needs the ``asynchronous`` form."""
        import fsspec

        options: dict[str, Any] = {"client_kwargs": {"region_name": self.region}, "asynchronous": asynchronous,
                                   "session": counted_aiobotocore_session(),
                                   "config_kwargs": {"retries": {"mode": self.retries.mode,
                                                                 "total_max_attempts": self.retries.max_attempts},
                                                     "connect_timeout": self.retries.connect_timeout_s,
                                                     "read_timeout": self.retries.read_timeout_s}}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.has_keys:
            options.update(key=self.access_key, secret=self.secret_key)
        filesystem = fsspec.filesystem("s3", **options)
        filesystem.retries = S3FS_ATTEMPTS  # s3fs's own loop (lost when pickled): botocore retries each request
        return filesystem

    def zarr_store(self, uri: str, read_only: bool = False):
        """A zarr store rooted at ``uri`` (``s3://bucket/prefix`` through s3fs, or a local folder)."""
        import zarr

        if uri.startswith("s3://"):
            return zarr.storage.FsspecStore(self.fsspec_filesystem(asynchronous=True), read_only=read_only,
                                            path=uri.removeprefix("s3://").rstrip("/"))
        _, path = self.resolve(uri)
        return zarr.storage.LocalStore(path, read_only=read_only)


S3FS_ATTEMPTS = 2  # s3fs's loop around botocore's (a body cut short is read again once): attempts multiply


@functools.cache
def counted_aiobotocore_session():
    """One aiobotocore session per process whose clients count their retries (one session keeps fsspec's
    instance cache working: the session is part of its key)."""
    from aiobotocore.session import AioSession

    session = AioSession()
    count_retries(session)
    return session


class ConfiguredS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem built from an ``ObjectStoreConfig``. pyarrow pickles an S3 filesystem
    without its retry strategy; this one pickles as its config and is rebuilt whole in the receiving
    process (a Ray Data read task, a Ray Train worker)."""

    def __init__(self, config: ObjectStoreConfig) -> None:
        options: dict[str, Any] = {"region": config.region}
        if config.endpoint_url:
            parsed = urlparse(config.endpoint_url)
            options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        if config.has_keys:
            options.update(access_key=config.access_key, secret_key=config.secret_key)
        retries = config.retries
        super().__init__(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=retries.max_attempts),
                         connect_timeout=retries.connect_timeout_s, request_timeout=retries.read_timeout_s,
                         allow_delayed_open=True)  # an object smaller than a part is one PUT at close
        self.config = config

    def __reduce__(self):
        return ConfiguredS3FileSystem, (self.config,)
