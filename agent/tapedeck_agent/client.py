"""The agent's gRPC client: the five calls it needs, and server errors turned into
``ServerError`` with a retry class (transient / recording / credentials).

Only ``tapedeck.v1`` (generated code), grpc, grpc_status and protobuf are imported: nothing
from the server.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tapedeck.v1 import (
    chunk_pb2,
    chunk_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    recording_pb2,
    recording_pb2_grpc,
)

ERROR_DOMAIN = "tapedeck.dev"
UPLOAD_PIECE = 64 * 1024
#: Metadata key carrying the agent's local recording id (to find a recording whose create
#: response was lost in a crash).
LOCAL_ID_KEY = "agent_recording_id"

_C = grpc.StatusCode
#: Error types that concern the agent's credentials: nothing will work until an operator acts.
CREDENTIAL_TYPES = frozenset({"unauthorized", "forbidden"})
#: Error types that are worth retrying later, whatever the recording.
TRANSIENT_TYPES = frozenset({"storage_unavailable", "rate_limit_exceeded", "idempotency_conflict",
                             "internal_error",
                             # limits (issue 15): keep the audio spooled and retry later
                             "streaming_limit_exceeded", "storage_quota_exceeded"})
#: gRPC codes without an ErrorInfo that are worth retrying (network, overload, server bugs).
TRANSIENT_CODES = frozenset({_C.UNAVAILABLE, _C.DEADLINE_EXCEEDED, _C.RESOURCE_EXHAUSTED,
                             _C.ABORTED, _C.INTERNAL, _C.UNKNOWN, _C.CANCELLED})


@dataclass
class ServerError(Exception):
    """An error answer (or no answer) from the server.

    ``kind`` says what to do: ``transient`` (retry with backoff), ``credentials`` (stop all
    uploads until an operator fixes the token), ``recording`` (park this recording), or
    ``mismatch`` (``chunk_mismatch`` / ``checksum_mismatch``: repair and retry).
    """

    type: str
    message: str
    code: grpc.StatusCode | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.type}: {self.message}")

    @property
    def kind(self) -> str:
        if self.type in ("chunk_mismatch", "checksum_mismatch"):
            return "mismatch"
        if self.type in CREDENTIAL_TYPES or self.code in (_C.UNAUTHENTICATED,
                                                          _C.PERMISSION_DENIED):
            return "credentials"
        if self.type in TRANSIENT_TYPES or (self.type == "rpc_error"
                                            and self.code in TRANSIENT_CODES):
            return "transient"
        return "recording"


def parse_rpc_error(err: grpc.RpcError) -> ServerError:
    """The server's ErrorInfo (reason → lower-case type, metadata JSON-decoded), or for
    errors without one (connection refused, deadline) a ``rpc_error`` with the gRPC code."""
    code: grpc.StatusCode | None = err.code() if hasattr(err, "code") else None
    message = err.details() if hasattr(err, "details") else str(err)
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                details = {k: _json_or_text(v) for k, v in info.metadata.items()}
                return ServerError(info.reason.lower(), status.message, code, details)
    return ServerError("rpc_error", f"{code.name if code else 'no status'}: {message}", code)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def status_name(value: int) -> str:
    """``RECORDING_STATUS_UPLOADED`` → ``uploaded``."""
    name = recording_pb2.RecordingStatus.Name(value)  # type: ignore[arg-type]
    return name.removeprefix("RECORDING_STATUS_").lower()


@dataclass(frozen=True)
class RemoteRecording:
    """What the agent needs to know about a server recording."""

    id: str
    status: str
    max_chunks: int | None
    chunk_url_template: str | None = None


def _remote(rec: recording_pb2.Recording) -> RemoteRecording:
    return RemoteRecording(rec.id, status_name(rec.status), rec.max_chunks or None,
                           rec.chunk_upload_url_template or None)


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A client context verifying the server (certificate and host name) against
    ``ca_file`` or, when empty, the system roots."""
    return ssl.create_default_context(cafile=ca_file or None)


def put_chunk_url(template: str, part: int, data: bytes, md5: str, timeout_s: float, *,
                  ca_file: str = "") -> bool:
    """PUT one chunk to ``chunk_upload_url_template`` (its upload token authorizes, with a
    Content-MD5 the server checks); returns ``already_stored``. Errors become ServerError:
    the REST error type when the body has one, else transient for 5xx/429 and no answer.
    An https URL is verified with ``ca_file`` (or the system roots)."""
    url = template.replace("{part}", str(part))
    headers = {"Content-MD5": base64.b64encode(bytes.fromhex(md5)).decode(),
               "Content-Type": "audio/ogg"}
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        context = tls_context(ca_file) if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:
            return bool(json.loads(resp.read() or b"{}").get("already_stored"))
    except urllib.error.HTTPError as err:
        raise _http_error(err) from None
    except (urllib.error.URLError, OSError) as err:
        raise ServerError("rpc_error", f"PUT {url.split('?')[0]}: {err}",
                          _C.UNAVAILABLE) from None


def _http_error(err: urllib.error.HTTPError) -> ServerError:
    try:
        body = json.loads(err.read() or b"{}").get("error") or {}
    except ValueError:
        body = {}
    kind = str(body.pop("type", ""))
    message = str(body.pop("message", err.reason))
    if kind == "unauthorized":  # the URL's upload token, not the device token
        return ServerError("upload_url_rejected", message, None, body)
    if kind:
        return ServerError(kind, message, None, body)
    code = _C.UNAVAILABLE if err.code >= 500 or err.code == 429 else _C.FAILED_PRECONDITION
    return ServerError("rpc_error", f"HTTP {err.code}: {message}", code)


class AgentClient:
    """One gRPC channel to the server, authenticated with the device token."""

    def __init__(self, target: str, token: str, *, tls: bool = False, timeout_s: float = 30.0,
                 reconnect_max_s: float = 10.0, ca_file: str = "") -> None:
        """TLS (``tls`` or a ``ca_file``) verifies the server with ``ca_file`` or the system
        roots; otherwise the channel is plaintext (a server on loopback)."""
        options = [
            # Reconnect quickly after an outage; the uploader does its own backoff.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_max_s * 1000)),
            ("grpc.keepalive_time_ms", 60_000),
        ]
        if tls or ca_file:
            roots = Path(ca_file).read_bytes() if ca_file else None
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=roots), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout_s
        self._recordings = recording_pb2_grpc.RecordingServiceStub(self._channel)
        self._chunks = chunk_pb2_grpc.ChunkServiceStub(self._channel)
        self._devices = device_pb2_grpc.DeviceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise parse_rpc_error(err) from None

    def create_recording(self, *, key: str, name: str, started_at: str,
                         chunk_duration_ms: int,
                         estimated_duration_ms: int | None) -> RemoteRecording:
        """Create a streaming Opus recording; ``key`` is the idempotency key and is also
        stored in the metadata (``agent_recording_id``) for ``find_recording``."""
        start = Timestamp()
        start.FromDatetime(datetime.strptime(started_at, "%Y-%m-%dT%H:%M:%S.%fZ")
                           .replace(tzinfo=UTC))
        req = recording_pb2.CreateRecordingRequest(
            name=name, start_time=start, codec=recording_pb2.CODEC_OPUS, streaming=True,
            chunk_duration_ms=chunk_duration_ms, metadata={LOCAL_ID_KEY: key},
            idempotency_key=key)
        if estimated_duration_ms is not None:
            req.estimated_duration_ms = estimated_duration_ms
        return _remote(self._call(self._recordings.CreateRecording, req).recording)

    def find_recording(self, key: str, pages: int = 20) -> RemoteRecording | None:
        """This device's recording created with ``key``, if a create reached the server
        (searched newest first through at most ``pages`` pages of 100)."""
        token = ""
        for _ in range(pages):
            resp = self._call(self._recordings.ListRecordings,
                              recording_pb2.ListRecordingsRequest(page_size=100,
                                                                  page_token=token))
            for rec in resp.recordings:
                if rec.metadata.get(LOCAL_ID_KEY) == key:
                    return _remote(rec)
            token = resp.next_page_token
            if not token:
                return None
        return None

    def get_recording(self, recording_id: str) -> RemoteRecording:
        resp = self._call(self._recordings.GetRecording,
                          recording_pb2.GetRecordingRequest(id=recording_id))
        return _remote(resp.recording)

    def upload_chunk(self, recording_id: str, part: int, data: bytes, md5: str) -> bool:
        """Send one chunk (header, then 64 KiB pieces); returns ``already_stored``."""

        def messages() -> Iterator[chunk_pb2.UploadChunkRequest]:
            yield chunk_pb2.UploadChunkRequest(header=chunk_pb2.ChunkHeader(
                recording_id=recording_id, part=part, md5=md5, size_bytes=len(data)))
            for i in range(0, len(data), UPLOAD_PIECE):
                yield chunk_pb2.UploadChunkRequest(data=data[i : i + UPLOAD_PIECE])

        resp = self._call(self._chunks.UploadChunk, messages())
        return bool(resp.already_stored)

    def list_chunks(self, recording_id: str) -> dict[int, str]:
        """The chunks the server holds: part → md5."""
        resp = self._call(self._chunks.ListChunks,
                          chunk_pb2.ListChunksRequest(recording_id=recording_id))
        return {c.part: c.md5 for c in resp.chunks}

    def finalize(self, recording_id: str, total_chunks: int, duration_ms: int,
                 checksum_md5: str) -> str:
        """Finalize; returns the recording's status afterwards."""
        resp = self._call(self._recordings.FinalizeRecording,
                          recording_pb2.FinalizeRecordingRequest(
                              id=recording_id, total_chunks=total_chunks,
                              final_duration_ms=duration_ms, checksum_md5=checksum_md5))
        return status_name(resp.status)

    def send_heartbeat(self, *, device_state: str, **fields: Any) -> dict[str, Any] | None:
        """DeviceService.SendHeartbeat for this device ("me") with ``fields`` (fields of
        ``SendHeartbeatRequest``; ``None`` values are left unset). Returns the pushed
        settings of the answer (``version`` plus the fields set; unset ones ``None``), or
        ``None`` when the server sends none (an older server)."""
        state = device_pb2.DeviceState.Value("DEVICE_STATE_" + device_state.upper())
        req = device_pb2.SendHeartbeatRequest(
            device_id="me", device_state=state,
            **{k: v for k, v in fields.items() if v is not None})
        resp = self._call(self._devices.SendHeartbeat, req)
        if not resp.HasField("settings"):
            return None
        s = resp.settings
        names = ("chunk_duration_ms", "bitrate", "dtx", "heartbeat_interval_s")
        return {"version": s.version,
                **{n: getattr(s, n) if s.HasField(n) else None for n in names}}
