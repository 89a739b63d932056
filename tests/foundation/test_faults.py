"""The fault-injecting S3 proxy: transparent when idle, and each fault reaches every client as S3's would.

Clients run with their own retries off so that what a fault looks like to each of them is visible.
"""

from __future__ import annotations

import errno
import io
import random
import socket
import time

import boto3
import botocore.config
import botocore.exceptions
import pyarrow.fs as pafs
import pytest
import s3fs

from infra.local.faults import Fault, FaultProxy, classify

MIB = 2**20
PART = 5 * MIB  # S3's smallest multipart part


def boto3_client(store, **config):
    config = {"retries": {"mode": "standard", "total_max_attempts": 1}, **config}
    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name=store.region,
                        aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
                        config=botocore.config.Config(**config))


def pyarrow_fs(store) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=store.endpoint_url.removeprefix("http://"), scheme="http",
                             access_key=store.access_key, secret_key=store.secret_key, region=store.region,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))


def fsspec_s3(store) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(endpoint_url=store.endpoint_url, key=store.access_key, secret=store.secret_key,
                           client_kwargs={"region_name": store.region}, skip_instance_cache=True,
                           config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 1}})
    fs.retries = 1  # s3fs's own retry loop around botocore's: a class attribute, not an argument
    return fs


@pytest.mark.parametrize("method, target, expected", [
    ("GET", "/", "list"),  # ListBuckets
    ("GET", "/bkt?list-type=2&prefix=raw%2F&encoding-type=url", "list"),
    ("GET", "/bkt?versions&prefix=a", "list"),
    ("GET", "/bkt?uploads", "list"),  # ListMultipartUploads
    ("GET", "/bkt/a/b.nii?uploadId=u1", "list"),  # ListParts
    ("GET", "/bkt/a/b.nii", "get"),
    ("GET", "/bkt/a%20b.nii?versionId=3", "get"),
    ("GET", "/bkt?location", "other"),
    ("HEAD", "/bkt/a/b.nii", "head"),
    ("HEAD", "/bkt", "head"),
    ("PUT", "/bkt/a/b.nii", "put"),  # PutObject and CopyObject
    ("POST", "/bkt/a/b.nii?uploads", "put"),  # CreateMultipartUpload
    ("POST", "/bkt/a/b.nii?uploadId=u1", "put"),  # CompleteMultipartUpload
    ("PUT", "/bkt/a/b.nii?partNumber=2&uploadId=u1", "part"),
    ("PUT", "/bkt", "other"),  # CreateBucket
    ("DELETE", "/bkt/a/b.nii", "delete"),
    ("DELETE", "/bkt/a/b.nii?uploadId=u1", "delete"),  # AbortMultipartUpload
    ("POST", "/bkt?delete", "delete"),  # DeleteObjects
])
def test_requests_are_classified_as_s3_routes_them(method, target, expected):
    assert classify(method, target)[0] == expected


def test_classify_names_the_object_addressed():
    assert classify("GET", "/bkt/raw/a%20b.nii?partNumber=1")[1] == "bkt/raw/a b.nii"
    assert classify("GET", "/bkt?list-type=2")[1] == "bkt"


def test_an_idle_proxy_is_byte_identical_for_boto3_pyarrow_and_s3fs(object_store, bucket, flaky_store):
    store, proxy = flaky_store
    direct = object_store.boto3_client()
    payload = random.Random(5).randbytes(PART + 123_457)  # two multipart parts, the second short

    client = boto3_client(store)
    client.put_object(Bucket=bucket, Key="boto3/small", Body=payload[:1000])
    client.upload_fileobj(io.BytesIO(payload), bucket, "boto3/multipart",
                          Config=boto3.s3.transfer.TransferConfig(multipart_threshold=PART, multipart_chunksize=PART))
    arrow = pyarrow_fs(store)
    with arrow.open_output_stream(f"{bucket}/pyarrow/aws-chunked") as out:  # chunked parts, trailing checksum
        out.write(payload)
    fsspec = fsspec_s3(store)
    fsspec.pipe_file(f"{bucket}/s3fs/put", payload)

    written = ["boto3/multipart", "pyarrow/aws-chunked", "s3fs/put"]
    for key in written:
        assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == payload, key
    assert direct.get_object(Bucket=bucket, Key="boto3/small")["Body"].read() == payload[:1000]

    for key in written:
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
        ranged = client.get_object(Bucket=bucket, Key=key, Range="bytes=4999990-5000009")["Body"].read()
        assert ranged == payload[4999990:5000010]
        assert client.head_object(Bucket=bucket, Key=key)["ETag"] == direct.head_object(Bucket=bucket, Key=key)["ETag"]
        assert arrow.open_input_stream(f"{bucket}/{key}").read() == payload
        with arrow.open_input_file(f"{bucket}/{key}") as f:
            assert f.read_at(77, PART - 3) == payload[PART - 3:PART + 74]
        assert fsspec.cat_file(f"{bucket}/{key}") == payload
        assert fsspec.cat_file(f"{bucket}/{key}", start=11, end=4097) == payload[11:4097]
        assert fsspec.info(f"{bucket}/{key}")["size"] == len(payload)

    expected_listing = direct.list_objects_v2(Bucket=bucket)["Contents"]
    assert client.list_objects_v2(Bucket=bucket)["Contents"] == expected_listing
    listed = arrow.get_file_info(pafs.FileSelector(bucket, recursive=True))
    assert sorted((i.path, i.size) for i in listed if i.is_file) == sorted(
        (f"{bucket}/{o['Key']}", o["Size"]) for o in expected_listing)

    assert proxy.injected() == 0 and proxy.counts() == {}
    assert all(proxy.seen(c) > 0 for c in ("list", "get", "head", "put", "part"))


@pytest.mark.parametrize("kind, status, code", [("slow_down", 503, "SlowDown"), ("internal_error", 500, "InternalError")])
def test_error_answers_carry_s3s_status_code_and_xml_body(bucket, flaky_store, kind, status, code):
    store, proxy = flaky_store
    client = boto3_client(store)
    proxy.inject(Fault(kind, ["put", "get", "list"]))
    for call in (lambda: client.put_object(Bucket=bucket, Key="k", Body=b"x" * 70_000),
                 lambda: client.get_object(Bucket=bucket, Key="k"),
                 lambda: client.list_objects_v2(Bucket=bucket)):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    proxy.clear()
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchKey"):  # the refused PUT stored nothing
        client.get_object(Bucket=bucket, Key="k")
    assert proxy.counts() == {"put": {kind: 1}, "get": {kind: 1}, "list": {kind: 1}}


def test_reset_cuts_a_download_mid_body_and_an_upload_before_the_store(object_store, bucket, flaky_store):
    store, proxy = flaky_store
    client = boto3_client(store)
    object_store.boto3_client().put_object(Bucket=bucket, Key="whole", Body=b"z" * 100_000)

    proxy.inject(Fault("reset", ["get"], cut_at=0.3))
    body = client.get_object(Bucket=bucket, Key="whole")["Body"]
    with pytest.raises(botocore.exceptions.ResponseStreamingError, match="reset by peer"):
        body.read()

    proxy.inject(Fault("reset", ["put", "head", "list"]))
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="cut", Body=b"y" * 200_000)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.head_object(Bucket=bucket, Key="whole")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.list_objects_v2(Bucket=bucket)
    proxy.clear()
    keys = [o["Key"] for o in object_store.boto3_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["whole"]
    assert proxy.counts() == {"get": {"reset": 1}, "put": {"reset": 1}, "head": {"reset": 1}, "list": {"reset": 1}}


@pytest.mark.parametrize("kind, aws_error, get_error", [
    ("slow_down", "SLOW_DOWN", "SERVICE_UNAVAILABLE"),  # the SDK reads no error body on a GetObject 503
    ("internal_error", "INTERNAL_FAILURE", "INTERNAL_FAILURE"),
    ("reset", "NETWORK_CONNECTION", "NETWORK_CONNECTION"),
])
def test_pyarrow_reports_each_fault_by_its_aws_error(object_store, bucket, flaky_store, kind, aws_error, get_error):
    store, proxy = flaky_store
    arrow = pyarrow_fs(store)
    object_store.boto3_client().put_object(Bucket=bucket, Key="in", Body=b"q" * 50_000)
    proxy.inject(Fault(kind, ["get", "part", "list"]))
    with pytest.raises(OSError, match=f"AWS Error {get_error} during GetObject"):
        arrow.open_input_stream(f"{bucket}/in").read()
    with pytest.raises(OSError, match=f"AWS Error {aws_error} during UploadPart"):
        with arrow.open_output_stream(f"{bucket}/out") as out:
            out.write(b"w" * 50_000)
    with pytest.raises(OSError, match=f"AWS Error {aws_error} during ListObjectsV2"):
        arrow.get_file_info(pafs.FileSelector(bucket))
    assert proxy.counts() == {"get": {kind: 1}, "part": {kind: 1}, "list": {kind: 1}}


def test_s3fs_reports_each_fault_as_its_errno_or_payload_error(object_store, bucket, flaky_store):
    from aiohttp.client_exceptions import ClientPayloadError

    store, proxy = flaky_store
    fsspec = fsspec_s3(store)
    object_store.boto3_client().put_object(Bucket=bucket, Key="in", Body=b"q" * 50_000)
    with proxy.injecting(Fault("slow_down", ["put"])), pytest.raises(OSError) as slow:
        fsspec.pipe_file(f"{bucket}/out", b"w" * 10)
    assert slow.value.errno == errno.EBUSY
    with proxy.injecting(Fault("internal_error", ["get"])), pytest.raises(OSError) as internal:
        fsspec.cat_file(f"{bucket}/in")
    assert internal.value.errno == errno.EREMOTEIO
    with proxy.injecting(Fault("reset", ["get"])), pytest.raises(ClientPayloadError, match="Not enough data"):
        fsspec.cat_file(f"{bucket}/in")
    assert proxy.counts() == {"put": {"slow_down": 1}, "get": {"internal_error": 1, "reset": 1}}


def test_faults_fire_exactly_by_count_rate_window_and_key(object_store, bucket, flaky_store):
    store, proxy = flaky_store
    client = boto3_client(store)
    object_store.boto3_client().put_object(Bucket=bucket, Key="obj", Body=b"v")

    def outcomes(call, n):
        failed = []
        for _ in range(n):
            try:
                call()
                failed.append(False)
            except botocore.exceptions.ClientError:
                failed.append(True)
        return failed

    proxy.inject(Fault("slow_down", ["get"], count=3))
    assert outcomes(lambda: client.get_object(Bucket=bucket, Key="obj"), 6) == [True] * 3 + [False] * 3

    proxy.inject(Fault("internal_error", ["head"], rate=0.3, seed=11))
    draws = random.Random(11)
    expected = [draws.random() < 0.3 for _ in range(40)]
    assert outcomes(lambda: client.head_object(Bucket=bucket, Key="obj"), 40) == expected

    proxy.inject(Fault("slow_down", ["list"], for_s=0.5))
    assert outcomes(lambda: client.list_objects_v2(Bucket=bucket), 2) == [True, True]
    time.sleep(0.6)
    assert outcomes(lambda: client.list_objects_v2(Bucket=bucket), 1) == [False]

    proxy.inject(Fault("slow_down", ["put"], key="/checkpoints/"))
    assert outcomes(lambda: client.put_object(Bucket=bucket, Key="checkpoints/a", Body=b"1"), 1) == [True]
    assert outcomes(lambda: client.put_object(Bucket=bucket, Key="shards/a", Body=b"1"), 1) == [False]

    assert proxy.counts() == {"get": {"slow_down": 3}, "head": {"internal_error": sum(expected)},
                              "list": {"slow_down": 2}, "put": {"slow_down": 1}}
    assert proxy.injected("slow_down") == 6 and proxy.injected(on="head") == sum(expected)
    assert proxy.seen("get") == 6 and proxy.seen("head") == 40


def test_a_delay_stalls_the_request_until_the_client_times_out(object_store, bucket, flaky_store):
    store, proxy = flaky_store
    object_store.boto3_client().put_object(Bucket=bucket, Key="slow", Body=b"s" * 1000)
    proxy.inject(Fault("delay", ["get"], delay_s=0.6, count=2))
    started = time.monotonic()
    assert boto3_client(store).get_object(Bucket=bucket, Key="slow")["Body"].read() == b"s" * 1000
    assert time.monotonic() - started >= 0.6
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        boto3_client(store, read_timeout=0.2).get_object(Bucket=bucket, Key="slow")
    assert proxy.counts() == {"get": {"delay": 2}}


def test_stop_closes_open_connections_and_frees_the_port(object_store):
    proxy = FaultProxy(object_store.endpoint_url)
    url = proxy.start()
    host, port = url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)))  # a keep-alive connection that never sends
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.list_buckets()  # and one that did
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 5
    assert idle.recv(1) == b""  # closed from the proxy's side
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)


def test_fault_rules_are_checked():
    with pytest.raises(ValueError, match="rate must be in"):
        Fault("slow_down", ["get"], rate=1.5)
    with pytest.raises(ValueError):
        Fault("teapot", ["get"])
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        FaultProxy("https://s3.amazonaws.com")
