"""The managed SeaweedFS has one door: its S3 endpoint, which checks signatures (issue 15
item 3). Every other listener — master, volume, filer, admin (HTTP and gRPC) and the filer's
unix socket — refuses a plain client that has no credentials: no listing, no read, no
write, no write-id assignment."""

from __future__ import annotations

import http.client
import io
import os
import socket
import ssl
import stat
from pathlib import Path

import grpc
import pytest
from minio import Minio

from tapedeck.infra.weed import ManagedWeed

HTTP_PORTS = ("master.port", "volume.port", "filer.port", "admin.port")
GRPC_PORTS = ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc",
              "admin.port.grpc")
SECRET = b"a recording nobody else may hear " * 32


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self._path)


def _attempts(bucket: str) -> list[tuple[str, str, bytes | None]]:
    """(method, path, body): listing, reading, writing, assigning, on any component."""
    return [
        ("GET", f"/buckets/{bucket}/", None),
        ("GET", f"/buckets/{bucket}/secret", None),
        ("GET", "/buckets/?pretty=y", None),
        ("PUT", f"/buckets/{bucket}/secret", b"overwritten"),
        ("POST", f"/buckets/{bucket}/planted", b"planted"),
        ("GET", "/dir/assign", None),
        ("POST", "/dir/assign", None),
        ("GET", "/dir/lookup?volumeId=1", None),
        ("GET", "/vol/status", None),
        ("GET", "/status", None),
        ("GET", "/1,01637037d6", None),
        ("POST", "/1,01637037d6", b"planted"),
    ]


def _plain_http(conn: http.client.HTTPConnection, method: str, path: str,
                body: bytes | None) -> tuple[int, bytes]:
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""  # refused / reset / not HTTP: nothing served
    finally:
        conn.close()


@pytest.fixture
def planted(weed: ManagedWeed, fresh_bucket: str) -> str:
    """A bucket holding one private object written through the signed S3 endpoint."""
    client = Minio(weed.endpoint, weed.access_key, weed.secret_key, secure=False,
                   region="us-east-1")
    client.make_bucket(fresh_bucket)
    client.put_object(fresh_bucket, "secret", io.BytesIO(SECRET), len(SECRET))
    return fresh_bucket


def test_http_ports_serve_nothing_without_credentials(weed: ManagedWeed, planted: str) -> None:
    served = []
    for name in HTTP_PORTS:
        port = weed.ports[name]
        for method, path, body in _attempts(planted):
            status, data = _plain_http(http.client.HTTPConnection("127.0.0.1", port, timeout=5),
                                       method, path, body)
            if 200 <= status < 300 or SECRET[:20] in data or planted.encode() in data:
                served.append((name, method, path, status))
    assert served == []


def test_https_without_a_client_certificate_is_refused(weed: ManagedWeed, planted: str) -> None:
    """The internal HTTP ports speak TLS and require a client certificate of weed's own
    private CA (whose key is never stored): a TLS client without one gets no answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for name in HTTP_PORTS:
        conn = http.client.HTTPSConnection("127.0.0.1", weed.ports[name], timeout=5,
                                           context=context)
        status, _ = _plain_http(conn, "GET", f"/buckets/{planted}/secret", None)
        assert status == 0, name


def test_grpc_ports_refuse_clients_without_a_certificate(weed: ManagedWeed) -> None:
    for name in GRPC_PORTS:
        target = f"127.0.0.1:{weed.ports[name]}"
        for channel in (grpc.insecure_channel(target),
                        grpc.secure_channel(target, grpc.ssl_channel_credentials())):
            call = channel.unary_unary("/master_pb.Seaweed/Assign",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as caught:
                call(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
            channel.close()


def test_the_filer_unix_socket_needs_a_signed_token(weed: ManagedWeed, planted: str) -> None:
    sock = weed.data_dir / "filer.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    for method, path, body in _attempts(planted):
        status, data = _plain_http(_UnixHTTPConnection(str(sock)), method, path, body)
        assert not 200 <= status < 300 and SECRET[:20] not in data, (method, path, status)


def test_local_sockets_and_security_files_are_private(weed: ManagedWeed) -> None:
    """Unix sockets weed makes (data dir and /tmp) and its certificates: owner only."""
    paths = [weed.data_dir / "filer.sock", weed.data_dir / "s3.sock"]
    for kind in ("master", "volume", "filer", "s3", "admin"):
        p = Path(f"/tmp/seaweedfs-{kind}-grpc-{weed.ports[kind + '.port.grpc']}.sock")
        if p.exists():
            paths.append(p)
    paths += [p for p in (weed.data_dir / "security").iterdir()]
    paths.append(weed.data_dir / "security.toml")
    for p in paths:
        assert stat.S_IMODE(os.lstat(p).st_mode) & 0o077 == 0, p


def test_the_s3_door_still_checks_signatures(weed: ManagedWeed, planted: str) -> None:
    status, data = _plain_http(http.client.HTTPConnection("127.0.0.1", weed.s3_port, timeout=5),
                               "GET", f"/{planted}/secret", None)
    assert status == 403 and SECRET[:20] not in data
    signed = Minio(weed.endpoint, weed.access_key, weed.secret_key, secure=False,
                   region="us-east-1")
    assert signed.get_object(planted, "secret").read() == SECRET
