"""TapedeckError → gRPC status with ``google.rpc.ErrorInfo`` (reason = upper-case type).

Unknown exceptions become INTERNAL with a fixed message; the traceback goes to the log only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from tapedeck.errors import TapedeckError, error
from tapedeck.rpc_errors import from_rpc_error, to_status

__all__ = ["from_rpc_error", "to_status", "translate_errors"]

log = logging.getLogger("tapedeck.grpc")
F = TypeVar("F", bound=Callable[..., Any])


def translate_errors(method: F) -> F:
    """Wrap a servicer method: domain errors → rich status, anything else → INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except TapedeckError as exc:
            _abort(context, to_status(exc))
        except Exception:
            log.exception("unhandled error in %s", method.__qualname__)
            _abort(context, to_status(error("internal_error")))

    return wrapper  # type: ignore[return-value]


def _abort(context: grpc.ServicerContext, status: grpc.Status) -> None:
    """End the call with ``status``: what grpcio's ``abort_with_status`` does, spelled with
    the two calls every ``ServicerContext`` has (grpc_testing's lacks abort_with_status)."""
    context.set_trailing_metadata(status.trailing_metadata)
    context.abort(status.code, status.details)
