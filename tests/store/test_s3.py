"""S3Store specifics: error mapping against misbehaving real HTTP servers, bucket handling,
credentials, and presigning for a public host."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from minio import Minio

from tapedeck.errors import TapedeckError
from tapedeck.infra.store import ObjectExists, ObjectNotFound
from tapedeck.infra.store.s3 import _S3_CODES, MinioPrivate, S3Store, presign_v4
from tapedeck.infra.weed import ManagedWeed, free_port


class RawServer:
    """A loopback TCP server answering every connection with ``handler(conn)``."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._handler = handler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self.requests += 1
                _read_head(conn)
                self._handler(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _read_head(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    made: list[RawServer] = []

    def make(handler: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(handler)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def unavailable(call: Callable[[], object]) -> TapedeckError:
    with pytest.raises(TapedeckError) as exc:
        call()
    assert exc.value.type == "storage_unavailable"
    return exc.value


@pytest.mark.timeout(60)
def test_hung_server_times_out_as_unavailable() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        port = listener.getsockname()[1]
        s = S3Store(f"127.0.0.1:{port}", "AKIDEXAMPLE", "x" * 40, "bucket", read_timeout=0.5)
        unavailable(lambda: s.stat("k"))
        unavailable(lambda: s.put("k", io.BytesIO(b"x"), 1))
        s.close()
    finally:
        listener.close()


@pytest.mark.timeout(60)
def test_truncated_body_while_streaming_is_unavailable(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    def truncated(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n" + b"a" * 1000)

    server = raw_server(truncated)
    s = S3Store(f"127.0.0.1:{server.port}", "AKIDEXAMPLE", "x" * 40, "bucket")
    f = s.open("k")
    unavailable(f.read)
    f.close()
    s.close()


@pytest.mark.timeout(60)
def test_5xx_is_retried_a_bounded_number_of_times(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    def busy(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")

    server = raw_server(busy)
    s = S3Store(f"127.0.0.1:{server.port}", "AKIDEXAMPLE", "x" * 40, "bucket", retries=2)
    unavailable(lambda: s.put("k", io.BytesIO(b"x"), 1))
    assert server.requests == 3  # first try + 2 retries
    s.close()


def test_wrong_credentials_are_unavailable(weed: ManagedWeed, store: S3Store) -> None:
    bad = S3Store(weed.endpoint, weed.access_key, "wrong-" + weed.secret_key[6:], store.bucket)
    err = unavailable(lambda: bad.put("k", io.BytesIO(b"x"), 1))
    assert err.details["reason"] in {"SignatureDoesNotMatch", "AccessDenied"}
    unknown = S3Store(weed.endpoint, "AKIDUNKNOWN000000000", weed.secret_key, store.bucket)
    unavailable(lambda: unknown.stat("k"))
    assert store.stat("k") is None
    bad.close()
    unknown.close()


def test_missing_bucket_is_unavailable_and_ensure_bucket_creates_it(
    weed: ManagedWeed, fresh_bucket: str
) -> None:
    s = S3Store(weed.endpoint, weed.access_key, weed.secret_key, fresh_bucket)
    try:
        err = unavailable(lambda: s.put("k", io.BytesIO(b"x"), 1))
        assert err.details["reason"] == "NoSuchBucket"
        s.ensure_bucket()
        s.ensure_bucket()  # idempotent
        s.put("k", io.BytesIO(b"x"), 1)
        assert s.stat("k") is not None
    finally:
        s.close()


def _send_with_host(url: str, real_port: int, method: str, body: bytes | None,
                    headers: dict[str, str]) -> int:
    """Send ``url``'s request to weed on loopback with the URL's (public) Host header."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", real_port, timeout=10)
    try:
        conn.putrequest(method, f"{parts.path}?{parts.query}", skip_host=True)
        conn.putheader("Host", parts.netloc)
        for k, v in {**headers, "Content-Length": str(len(body or b""))}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_presigned_urls_for_a_public_host(weed: ManagedWeed, store: S3Store) -> None:
    public = S3Store(weed.endpoint, weed.access_key, weed.secret_key, store.bucket,
                     public_url="http://media.example.test:9999")
    data = b"via the proxy"
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    url, headers = public.presign_put("p/x.opus", timedelta(minutes=5), content_md5_b64=md5)
    assert url.startswith("http://media.example.test:9999/")
    assert _send_with_host(url, weed.s3_port, "PUT", data, headers) == 200
    url, headers = public.presign_put("p/y.opus", timedelta(minutes=5))
    assert url.startswith("http://media.example.test:9999/")
    assert _send_with_host(url, weed.s3_port, "PUT", data, headers) == 200
    get_url = public.presign_get("p/x.opus", timedelta(minutes=5))
    assert get_url.startswith("http://media.example.test:9999/")
    assert _send_with_host(get_url, weed.s3_port, "GET", None, {}) == 200
    # signed for the public host: presented with another Host it is refused
    direct = get_url.replace("media.example.test:9999", weed.endpoint)
    assert _send_with_host(direct, weed.s3_port, "GET", None, {}) == 403
    public.close()


def test_nothing_listening_fails_fast_without_hanging() -> None:
    s = S3Store(f"127.0.0.1:{free_port()}", "AKIDEXAMPLE", "x" * 40, "bucket")
    err = unavailable(lambda: s.stat("k"))
    assert err.details["reason"] == "MaxRetryError"
    s.close()


# -- one error table -------------------------------------------------------------------------


def s3_error_answer(status: int, code: str) -> Callable[[socket.socket], None]:
    """A handler answering like an S3 store refusing a request with ``code``."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>refused</Message><Key>k</Key><RequestId>1</RequestId></Error>").encode()

    def answer(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status} Refused\r\nContent-Type: application/xml\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    return answer


TABLE_CASES = [
    *((412, code, ObjectExists) for code, make in _S3_CODES.items() if make is ObjectExists),
    *((404, code, ObjectNotFound) for code, make in _S3_CODES.items() if make is ObjectNotFound),
    *((400, code, "checksum_mismatch") for code, make in _S3_CODES.items()
      if make not in (ObjectExists, ObjectNotFound)),
    (403, "AccessDenied", "storage_unavailable"),
    (400, "SomethingNew", "storage_unavailable"),
]


@pytest.mark.parametrize(("status", "code", "expected"), TABLE_CASES,
                         ids=[c[1] for c in TABLE_CASES])
def test_every_sdk_call_goes_through_the_one_error_table(
        raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
        status: int, code: str, expected: type | str) -> None:
    """An S3 error code becomes the same exception whichever call meets it (put/open/list);
    stat and delete turn a missing key into None / success."""
    server = raw_server(s3_error_answer(status, code))
    s = S3Store(f"127.0.0.1:{server.port}", "AKIDEXAMPLE", "x" * 40, "bkt", retries=0)
    try:
        calls: list[Callable[[], object]] = [
            lambda: s.put("k", io.BytesIO(b"x"), 1), lambda: s.open("k"),
            lambda: list(s.list("k"))]
        for call in calls:
            with pytest.raises((TapedeckError, ObjectExists, ObjectNotFound)) as exc:
                call()
            if isinstance(expected, str):
                assert isinstance(exc.value, TapedeckError) and exc.value.type == expected
                if expected == "storage_unavailable":
                    assert exc.value.details.get("reason") == code
            else:
                assert type(exc.value) is expected
            assert exc.value.__cause__ is not None  # the SDK's error stays chained
        if expected is ObjectNotFound:
            assert s.stat("k") is None
            s.delete("k")
    finally:
        s.close()


# -- SigV4 known answer ----------------------------------------------------------------------


def test_presign_v4_matches_the_published_aws_example() -> None:
    """AWS's own example of a presigned GET (S3 API reference, "Authenticating Requests:
    Using Query Parameters (AWS Signature Version 4)"): same keys, date and expiry give the
    published URL, signature included."""
    url = presign_v4(method="GET", url="https://examplebucket.s3.amazonaws.com/test.txt",
                     region="us-east-1", access_key="AKIAIOSFODNN7EXAMPLE",
                     secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                     now=datetime(2013, 5, 24, tzinfo=UTC), expires=86400, headers={})
    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")


def test_presign_v4_signs_extra_headers_in_canonical_order() -> None:
    """Extra headers are lower-cased, sorted with ``host`` and change the signature."""
    args: dict[str, Any] = dict(method="PUT", url="http://127.0.0.1:8333/b/k", region="us-east-1",
                                access_key="AKIDEXAMPLE", secret_key="s" * 40,
                                now=datetime(2026, 1, 1, tzinfo=UTC), expires=60)
    plain = presign_v4(**args, headers={})
    signed = presign_v4(**args, headers={"If-None-Match": "*", "Content-MD5": "abc="})
    assert "X-Amz-SignedHeaders=content-md5%3Bhost%3Bif-none-match" in signed
    assert plain.rsplit("=", 1)[1] != signed.rsplit("=", 1)[1]


# -- the private minio calls -----------------------------------------------------------------


def test_minio_adapter_refuses_an_untested_sdk() -> None:
    client = Minio("127.0.0.1:1", "AKIDEXAMPLE", "x" * 40, region="us-east-1")
    MinioPrivate(client)  # the installed SDK is in the supported range
    for version in ("8.0.0", "7.1.17"):
        with pytest.raises(RuntimeError, match=rf"minio {version} is not supported"):
            MinioPrivate(client, version)

    class Stripped(Minio):
        _abort_multipart_upload = None  # type: ignore[assignment]

    with pytest.raises(RuntimeError, match="missing _abort_multipart_upload"):
        MinioPrivate(Stripped("127.0.0.1:1", "AKIDEXAMPLE", "x" * 40, region="us-east-1"))


def test_ranged_open_is_one_range_get(store: S3Store) -> None:
    """``open(key, offset, length)`` asks the store for the range (206 + Content-Range), so
    serving the tail of a long recording does not transfer its head."""
    data = bytes(range(256)) * 4096  # 1 MiB
    store.put("r", io.BytesIO(data), len(data))
    f = store.open("r", 1_000_000, 100)
    response = f.raw._response  # type: ignore[attr-defined]  # the urllib3 response
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 1000000-1000099/{len(data)}"
    assert f.read() == data[1_000_000:1_000_100]
    f.close()
    tail = store.open("r", 1_048_000)
    assert tail.raw._response.headers["Content-Length"] == "576"  # type: ignore[attr-defined]
    assert tail.read() == data[1_048_000:]
    tail.close()
