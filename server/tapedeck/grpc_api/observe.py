"""A gRPC server interceptor for every unary-response RPC: request id in, request id out,
and one ``tapedeck_requests_total`` / latency observation per call.

- The request id is the caller's ``x-request-id`` metadata (if plausible, see
  ``tapedeck.infra.logs.accept_request_id``) or a fresh one; it is set as the context's request id
  while the servicer runs (so logs, jobs and events carry it) and sent back as
  ``x-request-id`` trailing metadata (on success and on error).
- Each call is logged once on ``tapedeck.access`` (method, outcome, milliseconds).
- The outcome is ``ok``, or the error ``type`` of the status the servicer aborted with (the
  reason of its ``google.rpc.ErrorInfo``, lower-cased), or the gRPC code name otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from tapedeck.errors import ERROR_DOMAIN
from tapedeck.infra.logs import REQUEST_ID_HEADER, accept_request_id, request_context
from tapedeck.infra.metrics import Metrics

access = logging.getLogger("tapedeck.access")

_STATUS_DETAILS = "grpc-status-details-bin"


def call_outcome(context: grpc.ServicerContext) -> str:
    """``ok`` or the error type of a finished call (see the module docstring)."""
    code = context.code()  # type: ignore[attr-defined]  # grpcio ≥1.38; not in the stubs
    if code is None or code == grpc.StatusCode.OK:
        return "ok"
    for key, value in context.trailing_metadata() or ():
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                    return str(info.reason).lower()
    return str(code.name).lower()


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # not generic at run time
    _Interceptor = grpc.ServerInterceptor


class ObservingInterceptor(_Interceptor):
    """See the module docstring."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        incoming = dict(details.invocation_metadata or ()).get(REQUEST_ID_HEADER)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap(handler.unary_unary, method, incoming))
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=self._wrap(handler.stream_unary, method, incoming))
        return handler  # streaming responses (reflection, health watch): not observed

    def _wrap(self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str,
              incoming: Any) -> Callable[[Any, grpc.ServicerContext], Any]:
        metrics = self._metrics

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            rid = accept_request_id(incoming if isinstance(incoming, str) else None)
            started = time.perf_counter()
            outcome = "internal_error"
            with request_context(rid):
                try:
                    response = behavior(request, context)
                    outcome = call_outcome(context)
                    return response
                except BaseException:
                    outcome = call_outcome(context)
                    if outcome == "ok":  # raised without a status: grpc reports UNKNOWN
                        outcome = "unknown"
                    raise
                finally:
                    # Trailing metadata rides on the status (no extra frame); keep what an
                    # abort_with_status put there (the error details).
                    context.set_trailing_metadata(
                        (*(context.trailing_metadata() or ()), (REQUEST_ID_HEADER, rid)))
                    seconds = time.perf_counter() - started
                    metrics.observe_request("grpc", method, outcome, seconds)
                    access.info("grpc %s %s %.1f ms", method, outcome, seconds * 1000)

        return observed
