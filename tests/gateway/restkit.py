"""Helpers for REST gateway tests: a bearer-authenticated httpx client, chunk PUTs to the
template URL, and error-envelope assertions against the error table."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx

from tapedeck.errors import ERRORS


def md5_b64(data: bytes) -> str:
    """The ``Content-MD5`` header value of ``data``."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def client(base_url: str, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
    """An httpx client for the gateway, sending ``Authorization: Bearer token`` if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=timeout)


def chunk_url(template: str, part: int) -> str:
    """The template with ``{part}`` substituted, as a device does."""
    assert "{part}" in template
    return template.replace("{part}", str(part))


def put_chunk(template: str, part: int, data: bytes, *, with_md5: bool = True,
              headers: dict[str, str] | None = None) -> httpx.Response:
    """PUT raw bytes to the chunk URL (no Authorization header: the URL's token suffices)."""
    h = {"Content-Type": "application/octet-stream", **(headers or {})}
    if with_md5:
        h.setdefault("Content-MD5", md5_b64(data))
    return httpx.put(chunk_url(template, part), content=data, headers=h, timeout=60.0)


def zeros(total: int, block: int = 1 << 20) -> Iterator[bytes]:
    """``total`` zero bytes generated lazily, ``block`` at a time (nothing held in memory)."""
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        sent += n
        yield bytes(n)


def assert_error(resp: httpx.Response, type_: str) -> dict[str, Any]:
    """``resp`` is the error envelope of ``type_`` with the table's HTTP status; returns the
    inner error object."""
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["type"] == type_, body
    assert isinstance(err["message"], str) and err["message"], body
    assert resp.status_code == ERRORS[type_].http_status, (resp.status_code, body)
    return dict(err)


def create_streaming(c: httpx.Client, **extra: Any) -> dict[str, Any]:
    """POST a streaming recording; returns the 201 body."""
    resp = c.post("/v1/recordings", json={"streaming": True, **extra})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())
