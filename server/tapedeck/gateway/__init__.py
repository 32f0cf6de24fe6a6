"""REST/JSON gateway: the documented HTTP API (``api.md``) over the same domain as gRPC.

``start_gateway(app)`` serves it inside a Tapedeck process; ``build_app(domain)`` gives the
bare ASGI application. See ``routes`` (the routes), ``schemas`` (bodies and responses),
``body`` (bounded and streamed bodies), ``errors`` (the error envelope), ``docs`` (OpenAPI
and the HTML page) and ``server`` (uvicorn in a thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tapedeck.gateway.asgi import build_app
from tapedeck.gateway.health import HealthEndpoints
from tapedeck.gateway.observe import ObservingMiddleware
from tapedeck.gateway.server import GatewayServer, bind
from tapedeck.startup import EXIT_HTTP_PORT, StartupError

if TYPE_CHECKING:
    from tapedeck.app import App

__all__ = ["GatewayServer", "build_app", "start_gateway"]


def start_gateway(app: App) -> GatewayServer:
    """Serve the REST API of ``app`` on ``settings.host:settings.http_port`` (0 = any free
    port), set ``app.http_port``, and return the started server (``stop(grace)``).
    ``observe.ObservingMiddleware`` wraps the API: request ids, metrics, ``GET /metrics``.

    When the port was 0, the settings everyone shares are updated with the real port, so
    the ``chunk_upload_url_template``s the domain builds point at this gateway."""
    settings = app.settings
    try:
        sock = bind(settings.host, settings.http_port)
    except OSError as exc:
        raise StartupError(EXIT_HTTP_PORT, f"cannot listen for HTTP on {settings.host}:"
                           f"{settings.http_port}: {exc.strerror or exc} (another Tapedeck?); "
                           "stop it or pass another --http-port") from None
    api = build_app(app.domain)
    observed = ObservingMiddleware(api, app.metrics, api.routes)
    server = GatewayServer(HealthEndpoints(observed, app.health), sock,
                           ssl_context=app.certificate.ssl_context() if app.certificate else None,
                           header_timeout_s=float(settings.http_header_timeout_s),
                           body_timeout_s=float(settings.http_body_timeout_s))
    if settings.http_port != server.port:
        app.settings = settings.replace(http_port=server.port)
        app.domain.ctx.settings = app.settings
    app.http_port = server.port
    server.start()
    return server
