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
            context.abort_with_status(to_status(exc))
        except Exception:
            log.exception("unhandled error in %s", method.__qualname__)
            context.abort_with_status(to_status(error("internal_error")))

    return wrapper  # type: ignore[return-value]
