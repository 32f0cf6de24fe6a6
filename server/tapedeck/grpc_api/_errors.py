"""TapedeckError → gRPC status with ``google.rpc.ErrorInfo`` (reason = upper-case type).

Unknown exceptions become INTERNAL with a fixed message; the traceback goes to the log only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tapedeck.errors import ERROR_DOMAIN, TapedeckError, error

log = logging.getLogger("tapedeck.grpc")
F = TypeVar("F", bound=Callable[..., Any])


def to_status(exc: TapedeckError) -> grpc.Status:
    """The rich gRPC status of a domain error."""
    info = error_details_pb2.ErrorInfo(reason=exc.type.upper(), domain=ERROR_DOMAIN,
                                       metadata=exc.grpc_metadata())
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(
        code=exc.kind.grpc_code.value[0], message=exc.message, details=[detail]))


def from_rpc_error(err: grpc.RpcError) -> TapedeckError:
    """Rebuild the domain error from a client-side ``RpcError`` (used by clients and tests)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return TapedeckError.from_grpc(info.reason, status.message, dict(info.metadata))
    code = err.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE:
        return error("storage_unavailable", "The server is unavailable.")
    return error("internal_error", f"gRPC error {code.name}.")


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
