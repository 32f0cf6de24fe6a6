"""Slow clients must not hold the REST gateway: time limits on request heads and bodies.

- ``head_timeout_protocol(seconds)``: uvicorn's h11 protocol, plus a deadline for the request
  head. A new connection must send a complete head within ``seconds``; after a response, a
  connection that starts the next head must finish it within ``seconds`` (an idle keep-alive
  connection that sends nothing is left to uvicorn's keep-alive timeout). Otherwise the
  connection is closed (slowloris).
- ``BodyTimeout(app, seconds)``: ASGI middleware; while a request body is incomplete, each
  ``receive()`` must deliver within ``seconds``, else the route gets ``request_timeout``
  (408, and the connection is closed after the answer). Once the body is complete,
  ``receive()`` is passed through untouched (waiting for a disconnect is legitimate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tapedeck.errors import error

log = logging.getLogger("tapedeck.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HeadTimeoutProtocol(H11Protocol):
    """``H11Protocol`` with a request-head deadline (``head_timeout_s``, set per subclass)."""

    head_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _first_head = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer(first=True)

    def data_received(self, data: bytes) -> None:
        self._head_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer(first=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self, *, first: bool) -> None:
        self._cancel_head_timer()
        self._first_head, self._head_bytes = first, 0
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        started = self._first_head or self._head_bytes > 0
        if started and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection that sent no complete request head in %.0f s",
                     self.head_timeout_s)
            self.transport.close()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with a ``seconds`` head deadline."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": seconds})


class BodyTimeout:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self._app = app
        self._seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        complete = False
        seconds = self._seconds

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                with anyio.fail_after(seconds):
                    message = await receive()
            except TimeoutError:
                raise error("request_timeout", f"The request body paused for more than "
                            f"{seconds:.0f} s; send it again.", timeout_s=seconds) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self._app(scope, timed_receive, send)
