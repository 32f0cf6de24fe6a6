"""Undecodable request messages → INVALID_ARGUMENT ``invalid_request`` (not INTERNAL).

grpc calls a method's request deserializer before (unary) or while (streaming) the servicer
runs, and answers INTERNAL "Exception deserializing request!" when it raises. The
``DecodeGuard`` interceptor wraps every method's deserializer so a bad message becomes an
``Undecodable`` marker instead, and wraps the behavior so the marker is refused with the
error table's ``invalid_request``: at once for a unary request, and at the bad message for a
request stream (the servicer sees a ``TapedeckError`` raised by its request iterator, so
what it already handled of the stream is treated like any other failed upload).
It is installed innermost, so the observing interceptor still logs and counts the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from tapedeck.errors import TapedeckError, invalid
from tapedeck.rpc_errors import to_status

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # not generic at run time
    _Interceptor = grpc.ServerInterceptor

Behavior = Callable[[Any, grpc.ServicerContext], Any]


@dataclass(frozen=True)
class Undecodable:
    """A request message that did not parse (what the deserializer said)."""

    reason: str


def refusal(bad: Undecodable) -> TapedeckError:
    """The client-visible error for an undecodable message."""
    return invalid("request", f"The request is not a valid protobuf message ({bad.reason}).")


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
            return Undecodable(type(exc).__name__)

    return deserialize


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for message in requests:
        if isinstance(message, Undecodable):
            raise refusal(message)
        yield message


def _unary(behavior: Behavior) -> Behavior:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            context.abort_with_status(to_status(refusal(request)))
        return behavior(request, context)

    return guarded


def _streaming(behavior: Behavior) -> Behavior:
    def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        try:
            return behavior(_checked_stream(requests), context)
        except TapedeckError as exc:  # a servicer that does not translate errors itself
            context.abort_with_status(to_status(exc))

    return guarded


class DecodeGuard(_Interceptor):
    """See the module docstring."""

    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        changes: dict[str, Any] = {
            "request_deserializer": _safe(handler.request_deserializer)}
        for name in ("unary_unary", "unary_stream"):
            if getattr(handler, name) is not None:
                changes[name] = _unary(getattr(handler, name))
        for name in ("stream_unary", "stream_stream"):
            if getattr(handler, name) is not None:
                changes[name] = _streaming(getattr(handler, name))
        return handler._replace(**changes)
