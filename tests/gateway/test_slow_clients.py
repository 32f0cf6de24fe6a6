"""Careless and slow clients (issue 16, item 3): a client that drops mid-body is its error,
not a server error; slow heads and stalled bodies are cut off while health keeps answering."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverkit import RunningServer, drop_bucket, make_settings, start_server


@pytest.fixture
def srv(weed: Any, tmp_path: Path) -> Iterator[RunningServer]:
    s = start_server(make_settings(weed, tmp_path / "data", http_header_timeout_s=1,
                                   http_body_timeout_s=1), roles=("http",))
    try:
        yield s
    finally:
        s.close()
        drop_bucket(weed, s.app.settings.s3_bucket)


def _connect(srv: RunningServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.app.http_port or 0), timeout=60)


def _head(method: str, path: str, length: int, token: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"Content-Length: {length}",
             "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head, then Content-Length bytes of body): a recv may split it."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {out!r}"
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {out!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _count(srv: RunningServer, outcome: str) -> float:
    value = srv.app.metrics.registry.get_sample_value(
        "tapedeck_requests_total",
        {"transport": "http", "method": "POST /v1/recordings", "outcome": outcome})
    return value or 0.0


def test_client_dropping_mid_json_body_is_not_a_server_error(
        srv: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with _connect(srv) as s:
            s.sendall(_head("POST", "/v1/recordings", 200, srv.api_key) + b'{"streaming": tr')
            time.sleep(0.2)  # the route is reading the body when the socket closes
    deadline = time.monotonic() + 30
    while _count(srv, "invalid_request") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(srv, "invalid_request") == 3
    assert _count(srv, "internal_error") == 0
    assert not [r for r in caplog.records if "unhandled" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_slow_clients_are_cut_off_and_health_keeps_answering(srv: RunningServer) -> None:
    rec = httpx.post(f"{srv.http_url}/v1/recordings", json={"streaming": True},
                     headers={"Authorization": f"Bearer {srv.api_key}"}).json()
    chunk_path = rec["chunk_upload_url_template"].split("127.0.0.1", 1)[1].split("/", 1)[1]
    heads, bodies, chunks = [], [], []
    for _ in range(40):  # slowloris: half a request head, then silence
        s = _connect(srv)
        s.sendall(b"GET /v1/recordings HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        heads.append(s)
    for _ in range(10):  # a JSON body that stalls half way
        s = _connect(srv)
        s.sendall(_head("POST", "/v1/recordings", 100, srv.api_key) + b'{"strea')
        bodies.append(s)
    for part in range(1, 6):  # a chunk body that stalls half way
        s = _connect(srv)
        s.sendall(_head("PUT", "/" + chunk_path.replace("{part}", str(part)), 10_000)
                  + bytes(3000))
        chunks.append(s)
    silent = [_connect(srv) for _ in range(10)]  # connect and never send a byte

    ready = httpx.get(f"{srv.http_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert httpx.get(f"{srv.http_url}/livez", timeout=10).status_code == 200

    for s in heads + silent:  # closed without an answer
        assert _read_all(s) == b""
        s.close()
    for s in bodies + chunks:  # 408 request_timeout, then closed
        raw = _read_all(s)
        s.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), raw[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["type"] == "request_timeout"
    listing = httpx.get(f"{srv.http_url}/v1/recordings/{rec['id']}/chunks",
                        headers={"Authorization": f"Bearer {srv.api_key}"}).json()
    assert listing["data"] == []  # nothing of the stalled chunks was stored


def test_a_dribbling_head_is_cut_off_even_while_bytes_arrive(srv: RunningServer) -> None:
    with _connect(srv) as s:
        s.settimeout(60)
        closed = False
        for byte in b"GET /v1/recordings HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 500:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.05)
        if not closed:  # the server may only have shut its side: it must send nothing
            assert _read_all(s) == b""
        assert httpx.get(f"{srv.http_url}/readyz", timeout=10).status_code == 200


def test_idle_keep_alive_connection_is_not_cut_by_the_head_timeout(srv: RunningServer) -> None:
    request = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
    with _connect(srv) as s:
        for _ in range(2):  # the same connection answers again after an idle pause
            s.sendall(request)
            answer = _read_response(s)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(1.5)  # longer than the head timeout, shorter than keep-alive
