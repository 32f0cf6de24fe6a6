"""Request bodies: bounded JSON bodies parsed into strict models, and chunk bodies streamed
block by block from the event loop to the (synchronous) domain in a worker thread.

Neither ever holds more than one body in memory: JSON bodies are refused with
``payload_too_large`` as soon as they exceed their limit (``Content-Length`` is checked
before anything is read), and chunk bodies are handed over one network block at a time (the
domain spools them to a temporary file and enforces ``max_chunk_bytes``). When a request is
refused before its body was read, uvicorn discards the rest of the body after the response,
so the client still reads the error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import TypeVar

import anyio.from_thread
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from tapedeck.errors import error, invalid
from tapedeck.gateway.errors import from_validation

M = TypeVar("M", bound=BaseModel)


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


def declared_length(request: Request) -> int | None:
    """The ``Content-Length`` header as an int (None if absent); ``invalid_request`` if it
    is not a non-negative integer."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise invalid("Content-Length", "Content-Length must be a non-negative integer.")
    return int(raw)


def check_length(request: Request, limit: int, what: str = "The body") -> None:
    """``payload_too_large`` if the declared length exceeds ``limit`` (nothing read)."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise error("payload_too_large", f"{what} may be at most {limit} bytes.",
                    max_bytes=limit)


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or ``payload_too_large`` as soon as it exceeds ``limit`` bytes."""
    check_length(request, limit)
    buf = bytearray()
    try:
        async for block in request.stream():
            buf += block
            if len(buf) > limit:
                raise error("payload_too_large", f"The body may be at most {limit} bytes.",
                            max_bytes=limit)
    except ClientDisconnect:  # the client is gone: its mistake, not a server error
        raise error("invalid_request", "The client disconnected before the body ended.",
                    field="body") from None
    return bytes(buf)


async def parse_json(request: Request, model: type[M], limit: int) -> M:
    """The body as ``model`` (an empty body counts as ``{}``); ``invalid_request`` naming the
    field for malformed JSON, wrong types, unknown fields or out-of-range values.
    ``Content-Type`` is not required (``curl -d`` sends a form type by default)."""
    raw = await read_limited(request, limit)
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        raise from_validation(exc) from None


def content_md5(value: str | None) -> str | None:
    """The hex MD5 of a ``Content-MD5`` header (base64 of the 16-byte digest), or None."""
    if value is None:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise invalid("Content-MD5", "Content-MD5 must be the base64 of a 16-byte MD5 digest.")
    return raw.hex()


class BodyPump:
    """Hands an ASGI request body to synchronous code running in an anyio worker thread.

    ``blocks()`` is iterated in the worker thread; each step asks the event loop for the next
    network blocks (``anyio.from_thread.run``), joined up to ``BATCH_BYTES`` so a 1 MiB
    chunk costs a few thread hops rather than one per network read; at most one batch is in
    flight and the server's flow control pauses the socket meanwhile. ``complete`` tells
    whether the whole body was received."""

    BATCH_BYTES = 256 * 1024

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False
        self.received = 0

    async def next_block(self) -> bytes | None:
        """The next non-empty batch of the body (about ``BATCH_BYTES``, less at its end), or
        None at the end of the body."""
        batch: list[bytes] = []
        size = 0
        while not self.complete and size < self.BATCH_BYTES:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            self.complete = not message.get("more_body", False)
            block: bytes = message.get("body", b"")
            if block:
                batch.append(block)
                size += len(block)
        self.received += size
        return b"".join(batch) if batch else None

    def blocks(self) -> Iterator[bytes]:
        """The body, block by block (call from the worker thread only)."""
        while (block := anyio.from_thread.run(self.next_block)) is not None:
            yield block
