"""The one table of named errors, shared by gRPC, REST, the worker and the agent.

Every error a client can see is a ``TapedeckError`` with a ``type`` from ``ERRORS``:

    TapedeckError                 base; .type, .message, .details (JSON-able dict)
    ├── InvalidRequest            invalid_request          400  INVALID_ARGUMENT
    ├── Unauthorized              unauthorized             401  UNAUTHENTICATED
    ├── Forbidden                 forbidden                403  PERMISSION_DENIED
    ├── NotFound                  *_not_found              404  NOT_FOUND
    ├── Conflict                  chunk_mismatch, ...      409  FAILED_PRECONDITION/ALREADY_EXISTS/ABORTED
    ├── Unprocessable             checksum_mismatch, ...   422  FAILED_PRECONDITION/INVALID_ARGUMENT
    ├── PayloadTooLarge           payload_too_large        413  RESOURCE_EXHAUSTED
    ├── RateLimited               rate_limit_exceeded      429  RESOURCE_EXHAUSTED
    │                             streaming_limit_exceeded 429  RESOURCE_EXHAUSTED
    │   (Forbidden)               storage_quota_exceeded   403  RESOURCE_EXHAUSTED
    ├── StorageUnavailable        storage_unavailable      503  UNAVAILABLE
    └── InternalError             internal_error           500  INTERNAL

Construct errors with ``error(type, message, **details)``; it picks the class from the table.
This module imports only the standard library and grpc (for status codes), so the device
agent can use it to interpret server errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class ErrorKind:
    """One row of the error table."""

    type: str
    http_status: int
    grpc_code: grpc.StatusCode
    default_message: str


_C = grpc.StatusCode

ERRORS: dict[str, ErrorKind] = {
    k.type: k
    for k in [
        ErrorKind("invalid_request", 400, _C.INVALID_ARGUMENT, "The request is invalid."),
        ErrorKind("unauthorized", 401, _C.UNAUTHENTICATED, "Missing or invalid credentials."),
        ErrorKind("forbidden", 403, _C.PERMISSION_DENIED, "The credential lacks a scope."),
        ErrorKind("recording_not_found", 404, _C.NOT_FOUND, "Recording not found."),
        ErrorKind("transcription_not_found", 404, _C.NOT_FOUND, "Transcription not found."),
        ErrorKind("device_not_found", 404, _C.NOT_FOUND, "Device not found."),
        ErrorKind("end_user_not_found", 404, _C.NOT_FOUND, "End user not found."),
        ErrorKind("webhook_not_found", 404, _C.NOT_FOUND, "Webhook endpoint not found."),
        ErrorKind("key_not_found", 404, _C.NOT_FOUND, "API key not found."),
        ErrorKind("media_not_found", 404, _C.NOT_FOUND, "Media not found."),
        ErrorKind("route_not_found", 404, _C.UNIMPLEMENTED, "No such route."),
        ErrorKind("method_not_allowed", 405, _C.UNIMPLEMENTED,
                  "The route does not support this HTTP method."),
        ErrorKind("chunk_mismatch", 409, _C.FAILED_PRECONDITION, "Chunk count mismatch."),
        ErrorKind("finalize_conflict", 409, _C.FAILED_PRECONDITION,
                  "The recording was already finalized with a different body."),
        ErrorKind("recording_not_streaming", 409, _C.FAILED_PRECONDITION,
                  "The recording no longer accepts chunks."),
        ErrorKind("recording_expired", 409, _C.FAILED_PRECONDITION,
                  "The recording expired before it was finalized."),
        ErrorKind("invalid_state", 409, _C.FAILED_PRECONDITION,
                  "The recording is not in a state that allows this."),
        ErrorKind("resource_already_exists", 409, _C.ALREADY_EXISTS, "The resource already exists."),
        ErrorKind("device_already_bound", 409, _C.FAILED_PRECONDITION, "The device is already bound."),
        ErrorKind("idempotency_conflict", 409, _C.ABORTED,
                  "A request with this Idempotency-Key is still running."),
        ErrorKind("checksum_mismatch", 422, _C.FAILED_PRECONDITION, "Checksum mismatch."),
        ErrorKind("idempotency_key_reused", 422, _C.INVALID_ARGUMENT,
                  "This Idempotency-Key was used with a different request body."),
        ErrorKind("payload_too_large", 413, _C.RESOURCE_EXHAUSTED, "The request body is too large."),
        ErrorKind("rate_limit_exceeded", 429, _C.RESOURCE_EXHAUSTED, "Too many requests."),
        ErrorKind("streaming_limit_exceeded", 429, _C.RESOURCE_EXHAUSTED,
                  "The device has too many open streaming recordings."),
        ErrorKind("storage_quota_exceeded", 403, _C.RESOURCE_EXHAUSTED,
                  "The project's storage quota is used up."),
        ErrorKind("storage_unavailable", 503, _C.UNAVAILABLE, "The object store is unavailable."),
        ErrorKind("internal_error", 500, _C.INTERNAL, "An internal error occurred."),
        ErrorKind("chunk_too_large", 409, _C.FAILED_PRECONDITION,
                  "A stored part exceeds max_chunk_bytes."),
        ErrorKind("chunk_not_found", 404, _C.NOT_FOUND, "Chunk not found."),
        # rob: a chunk whose bytes are not one valid Ogg Opus stream (nothing stored).
        ErrorKind("invalid_audio", 422, _C.INVALID_ARGUMENT, "The audio is not valid Ogg Opus."),
        # rob: the client sent its headers or body too slowly (the connection is closed).
        ErrorKind("request_timeout", 408, _C.DEADLINE_EXCEEDED,
                  "The request was not received in time."),
        ErrorKind("voice_profile_not_found", 404, _C.NOT_FOUND, "Voice profile not found."),
    ]
}

ERROR_DOMAIN = "tapedeck.dev"


class TapedeckError(Exception):
    """A client-visible error with a ``type`` from ``ERRORS`` and JSON-able details."""

    def __init__(self, type: str, message: str | None = None, **details: Any) -> None:
        if type not in ERRORS:
            raise ValueError(f"unknown error type {type!r}")
        self.type = type
        self.kind = ERRORS[type]
        self.message = message or self.kind.default_message
        self.details: dict[str, Any] = details
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        """The REST error envelope: ``{"error": {"type", "message", **details}}``."""
        return {"error": {"type": self.type, "message": self.message, **self.details}}

    def grpc_metadata(self) -> dict[str, str]:
        """Details as ErrorInfo metadata: every value JSON-encoded."""
        return {k: json.dumps(v) for k, v in self.details.items()}

    @classmethod
    def from_grpc(cls, reason: str, message: str, metadata: dict[str, str]) -> TapedeckError:
        """Rebuild an error from an ErrorInfo (reason in upper snake case)."""
        details = {k: json.loads(v) for k, v in metadata.items()}
        return error(reason.lower(), message, **details)


class InvalidRequest(TapedeckError):
    """invalid_request: the request is malformed; ``field`` names the culprit."""


class Unauthorized(TapedeckError):
    """unauthorized: missing, malformed, unknown, expired or revoked credentials."""


class Forbidden(TapedeckError):
    """forbidden: the credential is valid but lacks the scope."""


class NotFound(TapedeckError):
    """*_not_found: absent, or not visible to this credential (never reveals existence)."""


class Conflict(TapedeckError):
    """409 errors: the resource's state does not allow the request."""


class Unprocessable(TapedeckError):
    """422 errors: the request is well-formed but its content disagrees (checksums, keys)."""


class PayloadTooLarge(TapedeckError):
    """payload_too_large: the body exceeds the route's limit."""


class RateLimited(TapedeckError):
    """rate_limit_exceeded."""


class StorageUnavailable(TapedeckError):
    """storage_unavailable: the object store could not be reached; retry later."""


class InternalError(TapedeckError):
    """internal_error: a bug; the message is fixed and reveals nothing."""


def _class_for(kind: ErrorKind) -> type[TapedeckError]:
    if kind.type == "invalid_request":
        return InvalidRequest
    by_status: dict[int, type[TapedeckError]] = {
        401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: Unprocessable,
        413: PayloadTooLarge, 429: RateLimited, 503: StorageUnavailable, 500: InternalError,
    }
    return by_status.get(kind.http_status, TapedeckError)


def error(type: str, message: str | None = None, **details: Any) -> TapedeckError:
    """Build the right ``TapedeckError`` subclass for ``type``."""
    if type not in ERRORS:
        raise ValueError(f"unknown error type {type!r}")
    return _class_for(ERRORS[type])(type, message, **details)


def invalid(field: str, message: str) -> TapedeckError:
    """An ``invalid_request`` naming ``field``."""
    return error("invalid_request", message, field=field)
