"""TLS end to end (issue 15 item 5), with CAs and certificates this test makes itself: with
``TAPEDECK_TLS_CERT_FILE``/``TAPEDECK_TLS_KEY_FILE`` both the gRPC and the HTTP port speak
TLS only, chunk upload URLs are https, the device agent verifies the server with its own CA
file, and replaced certificate files are served to new connections without a restart."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.errors import TapedeckError
from tapedeck.infra.pki import CertificateAuthority
from tapedeck.infra.tls import check_transport
from tapedeck.infra.weed import ManagedWeed
from tapedeck.settings import Settings
from tapedeck.v1 import recording_pb2, recording_pb2_grpc
from tapedeck_agent.client import AgentClient, ServerError, put_chunk_url

from serverkit import RunningServer, auth, drop_bucket, make_settings, start_server

NAMES = ("127.0.0.1", "localhost")


class Pki:
    """Two independent CAs; the server's files hold a certificate of one of them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cas = {"one": CertificateAuthority("test CA one"),
                    "two": CertificateAuthority("test CA two")}
        for name, ca in self.cas.items():
            (folder / f"ca-{name}.pem").write_bytes(ca.cert_pem)
        self.cert, self.key = folder / "server.pem", folder / "server.key"

    def ca_file(self, name: str) -> Path:
        return self.folder / f"ca-{name}.pem"

    def install(self, name: str, *, key_too: bool = True) -> None:
        """Replace the server's files (atomically, as a renewal tool does)."""
        issued = self.cas[name].issue(f"server from {name}", NAMES)
        for path, data in ((self.cert, issued.cert_pem), (self.key, issued.key_pem)):
            if path == self.key and not key_too:
                continue
            tmp = path.with_name(path.name + ".new")
            tmp.write_bytes(data)
            os.replace(tmp, path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path)
    p.install("one")
    return p


@pytest.fixture
def tls_server(weed: ManagedWeed, tmp_path: Path, pki: Pki) -> Iterator[RunningServer]:
    settings = make_settings(weed, tmp_path / "data", tls_cert_file=str(pki.cert),
                             tls_key_file=str(pki.key))
    srv = start_server(settings, roles=("grpc", "http"))
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, settings.s3_bucket)


def _channel(srv: RunningServer, ca: Path | None) -> grpc.Channel:
    options = [("grpc.use_local_subchannel_pool", 1)]  # a fresh connection every time
    target = srv.grpc_target
    if ca is None:
        return grpc.insecure_channel(target, options)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(target, creds, options)


def _grpc_list(srv: RunningServer, ca: Path | None) -> Any:
    channel = _channel(srv, ca)
    try:
        return recording_pb2_grpc.RecordingServiceStub(channel).ListRecordings(
            recording_pb2.ListRecordingsRequest(), metadata=auth(srv.api_key), timeout=5)
    finally:
        channel.close()


def _https(srv: RunningServer, ca: Path) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{srv.app.http_port}",
                        headers={"Authorization": f"Bearer {srv.api_key}"},
                        verify=ssl.create_default_context(cafile=str(ca)), timeout=10)


def _served_issuer(port: int) -> str:
    """The issuer common name of the certificate the port presents to a new connection."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return str(x509.load_der_x509_certificate(der).issuer.rfc4514_string())


def test_grpc_is_tls_only_and_verified(tls_server: RunningServer, pki: Pki) -> None:
    assert isinstance(_grpc_list(tls_server, pki.ca_file("one")),
                      recording_pb2.ListRecordingsResponse)
    for wrong in (None, pki.ca_file("two")):  # plaintext, or a CA that did not sign it
        with pytest.raises(grpc.RpcError) as caught:
            _grpc_list(tls_server, wrong)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_is_tls_only_and_chunk_urls_are_https(tls_server: RunningServer,
                                                   pki: Pki) -> None:
    with pytest.raises(httpx.HTTPError, match="Server disconnected without sending a response"):
        httpx.get(f"http://127.0.0.1:{tls_server.app.http_port}/v1/recordings",
                  headers={"Authorization": f"Bearer {tls_server.api_key}"}, timeout=5)
    # not trusted by the system roots
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{tls_server.app.http_port}/v1/recordings", timeout=5)
    _, token = tls_server.device_token()
    with _https(tls_server, pki.ca_file("one")) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        rec = c.post("/v1/recordings", json={"streaming": True}).json()
        template = rec["chunk_upload_url_template"]
        assert template.startswith(f"https://127.0.0.1:{tls_server.app.http_port}/")
        data = b"OggS" + os.urandom(5000)
        resp = c.put(template.replace("{part}", "1"), content=data,
                     headers={"Authorization": ""})
        assert resp.status_code == 201, resp.text


def test_replaced_files_are_served_without_a_restart(tls_server: RunningServer,
                                                     pki: Pki) -> None:
    port = tls_server.app.http_port
    assert port is not None
    assert "test CA one" in _served_issuer(port)
    pki.install("two", key_too=False)  # half-way through a renewal: the pair does not match
    assert "test CA one" in _served_issuer(port)
    assert _grpc_list(tls_server, pki.ca_file("one")) is not None
    pki.install("two")
    assert "test CA two" in _served_issuer(port)
    with _https(tls_server, pki.ca_file("two")) as c:
        assert c.get("/v1/recordings").status_code == 200
    assert _grpc_list(tls_server, pki.ca_file("two")) is not None
    with pytest.raises(grpc.RpcError) as caught:
        _grpc_list(tls_server, pki.ca_file("one"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_agent_verifies_the_server_with_its_ca_file(tls_server: RunningServer,
                                                        pki: Pki) -> None:
    _, token = tls_server.device_token()
    agent = AgentClient(tls_server.grpc_target, token, ca_file=str(pki.ca_file("one")),
                        timeout_s=10)
    try:
        rec = agent.create_recording(key="k-tls", name="tls", started_at="2026-01-01T00:00:00.000Z",
                                     chunk_duration_ms=60_000, estimated_duration_ms=None)
    finally:
        agent.close()
    assert rec.chunk_url_template and rec.chunk_url_template.startswith("https://")
    data = b"OggS" + os.urandom(3000)
    md5 = hashlib.md5(data).hexdigest()
    assert put_chunk_url(rec.chunk_url_template, 1, data, md5, 10,
                         ca_file=str(pki.ca_file("one"))) is False
    # system roots do not know the test CA
    with pytest.raises(ServerError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        put_chunk_url(rec.chunk_url_template, 2, data, md5, 10)
    assert caught.value.kind == "transient"
    untrusting = AgentClient(tls_server.grpc_target, token, ca_file=str(pki.ca_file("two")),
                             timeout_s=5)
    try:
        with pytest.raises(ServerError, match=r"^rpc_error: UNAVAILABLE: "):
            untrusting.create_recording(key="k-tls-2", name="x",
                                        started_at="2026-01-01T00:00:00.000Z",
                                        chunk_duration_ms=60_000, estimated_duration_ms=None)
    finally:
        untrusting.close()


def test_plaintext_only_on_loopback(tmp_path: Path, pki: Pki) -> None:
    assert check_transport(Settings(host="127.0.0.1")) is None
    assert check_transport(Settings(host="::1")) is None
    assert check_transport(Settings(host="0.0.0.0", allow_plaintext=True)) is None
    assert check_transport(Settings(host="0.0.0.0", tls_cert_file=str(pki.cert),
                                    tls_key_file=str(pki.key))) is not None
    with pytest.raises(TapedeckError, match=r"Refusing to serve plaintext on 0\.0\.0\.0:") as caught:
        check_transport(Settings(host="0.0.0.0"))
    assert caught.value.type == "invalid_request"
    with pytest.raises(TapedeckError) as caught:
        check_transport(Settings(tls_cert_file=str(pki.cert)))  # the key is missing
    assert (caught.value.type, caught.value.details) == ("invalid_request",
                                                         {"field": "tls_key_file"})
    env = dict(os.environ, TAPEDECK_HOST="0.0.0.0", TAPEDECK_DATA_DIR=str(tmp_path / "d"))
    out = subprocess.run([sys.executable, "-m", "tapedeck", "serve"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "TAPEDECK_TLS_CERT_FILE" in json.loads(lines[0])["error"]["message"]
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_serve_announces_https(weed: ManagedWeed, tmp_path: Path, pki: Pki) -> None:
    from serverkit import spawn_server

    settings = make_settings(weed, tmp_path / "child", tls_cert_file=str(pki.cert),
                             tls_key_file=str(pki.key))
    child = spawn_server(settings, command="api")
    try:
        url = child.listening["http"]
        assert url.startswith("https://")
        resp = httpx.get(url + "/v1/recordings", timeout=10,
                         verify=ssl.create_default_context(cafile=str(pki.ca_file("one"))))
        assert resp.status_code == 401  # TLS works; no credential sent
    finally:
        child.terminate()
        drop_bucket(weed, settings.s3_bucket)
