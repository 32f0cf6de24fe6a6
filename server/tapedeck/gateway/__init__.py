"""REST/JSON gateway: the documented HTTP API (``api.md``) over the same domain as gRPC.

``listen`` + ``start_gateway(runtime, domain, sock)`` serve it inside a Tapedeck process;
``build_app(domain)`` gives the bare ASGI application. See ``routes`` (the routes),
``schemas`` (bodies and responses), ``body`` (bounded and streamed bodies), ``errors`` (the
error envelope), ``docs`` (OpenAPI and the HTML page) and ``server`` (uvicorn in a thread).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from tapedeck.gateway.asgi import build_app
from tapedeck.gateway.health import HealthEndpoints
from tapedeck.gateway.observe import ObservingMiddleware
from tapedeck.gateway.server import GatewayServer, bind
from tapedeck.startup import EXIT_HTTP_PORT, StartupError

if TYPE_CHECKING:
    from tapedeck.domain import Domain
    from tapedeck.infra.health import Health
    from tapedeck.infra.tls import ServerCertificate
    from tapedeck.runtime import Runtime

__all__ = ["GatewayServer", "build_app", "listen", "start_gateway"]


def listen(host: str, port: int) -> socket.socket:
    """The gateway's listening socket on ``host:port`` (0 = any free port: the socket knows
    the real one). ``App.open`` binds it before building the domain, whose chunk upload URLs
    name the port. A port that cannot be bound is ``StartupError(EXIT_HTTP_PORT)``."""
    try:
        return bind(host, port)
    except OSError as exc:
        raise StartupError(EXIT_HTTP_PORT, f"cannot listen for HTTP on {host}:{port}: "
                           f"{exc.strerror or exc} (another Tapedeck?); "
                           "stop it or pass another --http-port") from None


def start_gateway(runtime: Runtime, domain: Domain, sock: socket.socket, *,
                  health: Health | None = None,
                  certificate: ServerCertificate | None = None) -> GatewayServer:
    """Serve the REST API of ``domain`` on ``sock`` (from ``listen``; the server owns it from
    here on) and return the started server (``stop(grace)``; ``port``).
    ``observe.ObservingMiddleware`` wraps the API: request ids, metrics, ``GET /metrics``.
    ``health`` answers ``/livez``/``/readyz``; ``certificate`` makes it HTTPS only."""
    settings = runtime.settings
    api = build_app(domain)
    observed = ObservingMiddleware(api, runtime.metrics, api.routes)
    server = GatewayServer(HealthEndpoints(observed, health), sock,
                           ssl_context=certificate.ssl_context() if certificate else None,
                           header_timeout_s=float(settings.http_header_timeout_s),
                           body_timeout_s=float(settings.http_body_timeout_s))
    server.start()
    return server
