"""Domain errors on the gRPC wire, both ways: ``TapedeckError`` ⇄ status + ErrorInfo.

Used by the gRPC servicers and by Python callers of the API (tests, tools); imports only
grpc, grpcio-status and protobuf. (The device agent decodes errors itself, into
``tapedeck_agent.client.ServerError`` with a retry class.) ErrorInfo.reason is the
upper-case error ``type`` and ErrorInfo.metadata holds the details, each JSON-encoded.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tapedeck.errors import ERROR_DOMAIN, TapedeckError, error


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
    status = rpc_status.from_call(err)  # type: ignore[arg-type]  # RpcError is a Call
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return TapedeckError.from_grpc(info.reason, status.message, dict(info.metadata))
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return error("storage_unavailable", "The server is unavailable.")
    return error("internal_error", f"gRPC error {code.name}.")
