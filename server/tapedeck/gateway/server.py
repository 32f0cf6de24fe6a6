"""Runs the gateway's ASGI app with uvicorn in a background thread of the current process.

The socket is bound before the thread starts (port 0 = any free port), so the real port is
known at once; ``stop(grace)`` lets in-flight requests finish for up to ``grace`` seconds.
uvicorn's access log is off: chunk URLs carry upload tokens, which must never be logged.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
import time
from typing import Any

import uvicorn

from tapedeck.gateway.timeouts import BodyTimeout, head_timeout_protocol

log = logging.getLogger("tapedeck.gateway")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 if ``host`` contains a colon).

    The protocol must be given explicitly: asyncio sets TCP_NODELAY on accepted connections
    only when the socket says IPPROTO_TCP, and without it every response stalls ~40 ms
    (Nagle's algorithm against the client's delayed ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class GatewayServer:
    """uvicorn serving ``asgi`` on an already bound socket, in a daemon thread."""

    def __init__(self, asgi: Any, sock: socket.socket,
                 ssl_context: ssl.SSLContext | None = None, *, header_timeout_s: float = 10.0,
                 body_timeout_s: float = 30.0) -> None:
        """``ssl_context`` (``tapedeck.infra.tls``): serve HTTPS only with it; None = plain HTTP."""
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            context = ssl_context
            tls["ssl_context_factory"] = lambda _config, _default: context
        # Slow clients are cut off (tapedeck.gateway.timeouts): a request head must arrive
        # within header_timeout_s, and a body must not pause longer than body_timeout_s.
        config = uvicorn.Config(BodyTimeout(asgi, body_timeout_s), log_config=None,
                                access_log=False, lifespan="off", server_header=False,
                                timeout_keep_alive=30,
                                http=head_timeout_protocol(header_timeout_s), **tls)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"gateway-{self.port}")

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; return once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the REST gateway did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` s, then close."""
        started = time.monotonic()
        self._server.config.timeout_graceful_shutdown = max(1, math.ceil(grace))
        self._server.should_exit = True
        self._thread.join(grace + 5.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
        self._sock.close()
        took = time.monotonic() - started
        if took > grace + 1.0:
            log.warning("the REST gateway took %.1f s to stop (grace %.1f s; thread %s)",
                        took, grace, "still running" if self._thread.is_alive() else "done")
