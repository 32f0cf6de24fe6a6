"""ASGI middleware around the REST gateway: request ids, request metrics and ``/metrics``.

- ``GET /metrics`` answers the process's Prometheus exposition (``Metrics.render``, run in
  a worker thread because it reads SQLite). It is not part of the documented API and needs
  no credential: expose the HTTP port to scrapers only on a private network.
- Every other request runs under a request id: the caller's ``x-request-id`` (if plausible)
  or a fresh one, echoed in the ``x-request-id`` response header.
- Each request is logged once on ``tapedeck.access`` (route template, status, outcome,
  milliseconds; never the raw path or query, which may hold an upload token) and counted
  once in ``tapedeck_requests_total{transport="http", method, outcome}`` where ``method``
  is ``VERB /route/{template}`` (never a raw path: ids would explode the label set;
  ``unmatched`` for unknown routes) and ``outcome`` is ``ok`` below status 400,
  else the ``error.type`` of the JSON error envelope (``http_<status>`` if there is none).
  Request bodies stream through untouched; only error response bodies (small JSON) are read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from tapedeck.infra.logs import REQUEST_ID_HEADER, accept_request_id, request_context
from tapedeck.infra.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access = logging.getLogger("tapedeck.access")

METRICS_PATH = "/metrics"
_ERROR_BODY_LIMIT = 64 * 1024


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def error_type(status: int, body: bytes) -> str:
    """The outcome label of an error response: its envelope's ``error.type``, if any."""
    try:
        kind = json.loads(body)["error"]["type"]
        if isinstance(kind, str) and kind:
            return kind
    except (ValueError, KeyError, TypeError):
        pass
    return f"http_{status}"


class ObservingMiddleware:
    """See the module docstring. ``routes`` are the app's routes (for the route label)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Any]) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH and scope["method"] in ("GET", "HEAD"):
            await self._serve_metrics(scope, send)
            return
        rid = accept_request_id(_header(scope, REQUEST_ID_HEADER.encode()))
        state: dict[str, Any] = {"status": 500, "body": bytearray()}

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
                headers = [*message.get("headers", ()),
                           (REQUEST_ID_HEADER.encode(), rid.encode("latin-1"))]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and state["status"] >= 400 \
                    and len(state["body"]) < _ERROR_BODY_LIMIT:
                state["body"] += message.get("body", b"")
            await send(message)

        started = time.perf_counter()
        with request_context(rid):
            try:
                await self._app(scope, receive, send_observed)
            finally:
                status, seconds = state["status"], time.perf_counter() - started
                outcome = "ok" if status < 400 else error_type(status, bytes(state["body"]))
                route = self._route(scope)
                self._metrics.observe_request("http", route, outcome, seconds)
                access.info("http %s %d %s %.1f ms", route, status, outcome, seconds * 1000)

    def _route(self, scope: Scope) -> str:
        """``VERB /template`` of the route that handled the request (FastAPI stores the route
        in the scope), else of the first route whose pattern matches, else ``unmatched``."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path is None:
            for candidate in self._routes:
                regex = getattr(candidate, "path_regex", None)
                if regex is not None and regex.match(scope["path"]):
                    path = candidate.path
                    break
        return f"{scope['method']} {path}" if path else "unmatched"

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        body = await anyio.to_thread.run_sync(self._metrics.render)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", self._metrics.content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})
