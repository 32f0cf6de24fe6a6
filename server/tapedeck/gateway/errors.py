"""Every REST error is the envelope ``{"error": {"type", "message", ...details}}`` with the
HTTP status of the error table (``tapedeck.errors``) — including errors the framework raises
itself (unknown route, wrong method, request validation) and unexpected exceptions, which
become ``internal_error`` with a fixed message (the traceback goes to the log only)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tapedeck.errors import TapedeckError, error, invalid

log = logging.getLogger("tapedeck.gateway")
STORAGE_RETRY_AFTER_S = 2


def error_response(exc: TapedeckError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response of a domain error (status from the error table)."""
    extra = dict(headers or {})
    if exc.kind.http_status in (429, 503) and "retry_after_s" in exc.details:
        extra["Retry-After"] = str(exc.details["retry_after_s"])
    if exc.type == "unauthorized":
        extra["WWW-Authenticate"] = "Bearer"
    if exc.type == "storage_unavailable":  # rob: devices back off, then retry
        extra.setdefault("Retry-After", str(STORAGE_RETRY_AFTER_S))
    if exc.type == "request_timeout":  # rob: the rest of a stalled body is never read
        extra["Connection"] = "close"
    return JSONResponse(exc.to_json(), status_code=exc.kind.http_status, headers=extra)


def validation_error(errors: Sequence[Mapping[str, Any]], skip: int = 0) -> TapedeckError:
    """``invalid_request`` naming the first offending field (pydantic error list; ``skip``
    leading location parts such as ``"query"``)."""
    first: Mapping[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid"}
    loc = [str(part) for part in first.get("loc", ())][skip:]
    field = ".".join(loc) or "body"
    kind, msg = first.get("type", ""), str(first.get("msg", "invalid"))
    if kind == "missing":
        return invalid(field, f"{field} is required.")
    if kind == "extra_forbidden":
        return invalid(field, f"Unknown field {field}.")
    if kind == "json_invalid":
        return invalid("body", f"The body is not valid JSON: {msg.removeprefix('Invalid JSON: ')}.")
    if field == "body":
        return invalid("body", f"The body must be a JSON object: {msg}.")
    return invalid(field, f"{field}: {msg}.")


def from_validation(exc: ValidationError) -> TapedeckError:
    """A body model's ``ValidationError`` as ``invalid_request``."""
    return validation_error(exc.errors(include_url=False))


class ErrorRoute(APIRoute):
    """An ``APIRoute`` whose handler turns any unexpected exception into ``internal_error``
    (logged once, with its traceback) instead of letting it reach the client."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        name = self.name

        async def handler(request: Request) -> Response:
            try:
                return await inner(request)
            except (TapedeckError, StarletteHTTPException, RequestValidationError):
                raise
            except Exception:
                log.exception("unhandled error in route %s", name)
                return error_response(error("internal_error"))

        return handler


def install(app: FastAPI) -> None:
    """Register the envelope handlers on ``app``."""

    async def on_domain(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TapedeckError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors(), skip=1))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            allowed = allowed_methods(app, request.url.path)
            return error_response(
                error("method_not_allowed",
                      f"{request.method} is not supported here; use {', '.join(allowed)}.",
                      allowed=allowed),
                headers={"Allow": ", ".join(allowed)})
        if exc.status_code == 404:
            return error_response(error("route_not_found",
                                        f"No route {request.method} {request.url.path}."))
        log.warning("HTTP %s from the framework on %s", exc.status_code, request.url.path)
        return error_response(error("invalid_request", str(exc.detail), field="request"))

    async def on_unknown(_: Request, exc: Exception) -> Response:
        log.error("unhandled error outside the routes", exc_info=exc)
        return error_response(error("internal_error"))

    app.add_exception_handler(TapedeckError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unknown)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route accepts for ``path`` (for 405 and its ``Allow`` header)."""
    methods: set[str] = set()
    for route in app.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return sorted(methods)
