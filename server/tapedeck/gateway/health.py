"""Health endpoints of the REST gateway, answered on the event loop (no thread, no store or
database call: the last result of ``tapedeck.infra.health.Health``), so they keep answering while
slow clients hold connections or the store is down.

- ``GET /livez``: 200 ``{"status": "live"}`` while the process serves HTTP.
- ``GET /readyz``: 200 ``{"status": "ready", "checks": {...}}`` when the object store and the
  database answer, else 503 ``{"status": "not_ready", "checks": {...}}`` with
  ``Retry-After``. Each check is ``"ok"`` or the reason it failed. No credential needed.
"""

from __future__ import annotations

import json
from typing import Any

from tapedeck.gateway.timeouts import ASGIApp, Receive, Scope, Send
from tapedeck.infra.health import Health

LIVE_PATH = "/livez"
READY_PATH = "/readyz"
RETRY_AFTER_S = 2


class HealthEndpoints:
    """ASGI wrapper serving ``/livez`` and ``/readyz`` in front of ``app``."""

    def __init__(self, app: ASGIApp, health: Health | None) -> None:
        self._app = app
        self._health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and path in (LIVE_PATH, READY_PATH) \
                and scope["method"] in ("GET", "HEAD"):
            status, body = self._answer(path)
            await _send_json(send, status, body, head=scope["method"] == "HEAD")
            return
        await self._app(scope, receive, send)

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == LIVE_PATH:
            return 200, {"status": "live"}
        snap = self._health.snapshot() if self._health is not None else \
            {"ready": True, "checks": {}}
        if snap["ready"]:
            return 200, {"status": "ready", "checks": snap["checks"]}
        return 503, {"status": "not_ready", "checks": snap["checks"]}


async def _send_json(send: Send, status: int, body: dict[str, Any], *, head: bool) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(raw)).encode()), (b"cache-control", b"no-store")]
    if status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else raw})
