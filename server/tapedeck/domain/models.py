"""Domain objects and their canonical JSON shapes (the REST API and webhook payloads).

Field names are the REST names of ``api.md``; the gRPC layer maps them to proto fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tapedeck.clock import iso, parse_iso

RECORDING_STATUSES = ("pending", "streaming", "uploaded", "stitching", "completed", "failed",
                      "expired")
TRANSCRIPTION_STATUSES = ("none", "queued", "processing", "completed", "failed")
CODECS = ("opus", "wav", "mp3", "m4a", "webm", "flac", "ogg")
MIME_TYPES = {"opus": "audio/ogg", "wav": "audio/wav", "mp3": "audio/mpeg", "m4a": "audio/mp4",
              "webm": "audio/webm", "flac": "audio/flac", "ogg": "audio/ogg"}


@dataclass(frozen=True)
class Media:
    """One stored audio object of a recording."""

    id: str
    type: str
    mime_type: str
    file_size_bytes: int | None
    status: str
    created_at: datetime
    object_key: str

    def to_json(self) -> dict[str, Any]:
        """The media object of ``api.md`` (no object key: that stays server-side)."""
        return {"id": self.id, "type": self.type, "mime_type": self.mime_type,
                "file_size_bytes": self.file_size_bytes, "status": self.status,
                "created_at": iso(self.created_at)}


@dataclass(frozen=True)
class Recording:
    """A recording as stored; ``to_json`` is its REST shape."""

    id: str
    project_id: str
    device_id: str | None
    end_user_id: str | None
    name: str | None
    status: str
    codec: str
    streaming: bool
    duration_ms: int | None
    file_size_bytes: int | None
    mime_type: str | None
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    uploaded_at: datetime | None
    chunks_received: int
    max_chunks: int | None
    expires_at: datetime | None
    transcription_status: str
    transcription_id: str | None
    stitching_job_id: str | None
    metadata: dict[str, str]
    estimated_duration_ms: int | None = None
    chunk_duration_ms: int | None = None
    failure_type: str | None = None
    failure_message: str | None = None
    finalize_request: dict[str, Any] | None = None
    finalized_by: str | None = None
    gaps: list[dict[str, Any]] | None = None
    audio_key: str | None = None
    media: list[Media] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any], chunks_received: int,
                 media: list[Media]) -> Recording:
        """Build from a ``recordings`` row (column names = field names)."""
        return cls(
            id=row["id"], project_id=row["project_id"], device_id=row["device_id"],
            end_user_id=row["end_user_id"], name=row["name"], status=row["status"],
            codec=row["codec"], streaming=bool(row["streaming"]),
            duration_ms=row["duration_ms"], file_size_bytes=row["file_size_bytes"],
            mime_type=row["mime_type"], started_at=parse_iso(row["started_at"]),
            ended_at=parse_iso(row["ended_at"]), created_at=_dt(row["created_at"]),
            uploaded_at=parse_iso(row["uploaded_at"]), chunks_received=chunks_received,
            max_chunks=row["max_chunks"], expires_at=parse_iso(row["expires_at"]),
            transcription_status=row["transcription_status"],
            transcription_id=row["transcription_id"], stitching_job_id=row["stitching_job_id"],
            metadata=json.loads(row["metadata"] or "{}"),
            estimated_duration_ms=row["estimated_duration_ms"],
            chunk_duration_ms=row["chunk_duration_ms"],
            failure_type=row["failure_type"], failure_message=row["failure_message"],
            finalize_request=json.loads(row["finalize_request"])
            if row["finalize_request"] else None,
            finalized_by=row["finalized_by"],
            gaps=json.loads(row["gaps"]) if row["gaps"] else None,
            audio_key=row["audio_key"], media=media,
        )

    def to_json(self) -> dict[str, Any]:
        """The recording object of ``api.md``."""
        out: dict[str, Any] = {
            "id": self.id, "device_id": self.device_id, "end_user_id": self.end_user_id,
            "name": self.name, "status": self.status, "codec": self.codec,
            "streaming": self.streaming, "duration_ms": self.duration_ms,
            "file_size_bytes": self.file_size_bytes, "mime_type": self.mime_type,
            "started_at": iso(self.started_at), "ended_at": iso(self.ended_at),
            "created_at": iso(self.created_at), "uploaded_at": iso(self.uploaded_at),
            "chunks_received": self.chunks_received, "max_chunks": self.max_chunks,
            "expires_at": iso(self.expires_at),
            "transcription_status": self.transcription_status,
            "transcription_id": self.transcription_id,
            "stitching_job_id": self.stitching_job_id,
            "media": [m.to_json() for m in self.media],
            "metadata": self.metadata,
            "failure": {"type": self.failure_type, "message": self.failure_message}
            if self.failure_type else None,
        }
        if self.finalized_by:
            out["finalized_by"] = self.finalized_by
        if self.gaps is not None:
            out["gaps"] = self.gaps
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], project_id: str) -> Recording:
        """The inverse of ``to_json`` (for replaying a stored response over gRPC)."""
        failure = data.get("failure") or {}
        return cls(
            id=data["id"], project_id=project_id, device_id=data["device_id"],
            end_user_id=data["end_user_id"], name=data["name"], status=data["status"],
            codec=data["codec"], streaming=data["streaming"], duration_ms=data["duration_ms"],
            file_size_bytes=data["file_size_bytes"], mime_type=data["mime_type"],
            started_at=parse_iso(data["started_at"]), ended_at=parse_iso(data["ended_at"]),
            created_at=_dt(data["created_at"]), uploaded_at=parse_iso(data["uploaded_at"]),
            chunks_received=data["chunks_received"], max_chunks=data["max_chunks"],
            expires_at=parse_iso(data["expires_at"]),
            transcription_status=data["transcription_status"],
            transcription_id=data["transcription_id"],
            stitching_job_id=data["stitching_job_id"], metadata=data["metadata"],
            failure_type=failure.get("type"), failure_message=failure.get("message"),
            finalized_by=data.get("finalized_by"), gaps=data.get("gaps"),
            media=[Media(id=m["id"], type=m["type"], mime_type=m["mime_type"],
                         file_size_bytes=m["file_size_bytes"], status=m["status"],
                         created_at=_dt(m["created_at"]), object_key="")
                   for m in data["media"]],
        )


@dataclass(frozen=True)
class CreatedRecording:
    """A new recording and, for streaming ones, the chunk upload URL template."""

    recording: Recording
    chunk_upload_url_template: str | None

    def to_json(self) -> dict[str, Any]:
        """The recording object, plus ``chunk_upload_url_template`` for streaming ones."""
        out = self.recording.to_json()
        if self.chunk_upload_url_template is not None:
            out["chunk_upload_url_template"] = self.chunk_upload_url_template
        return out


@dataclass(frozen=True)
class FinalizeResult:
    """The finalize response of the original document."""

    id: str
    status: str
    transcription_status: str
    chunks_received: int
    stitching_job_id: str | None

    def to_json(self) -> dict[str, Any]:
        """The finalize response of ``api.md``."""
        return {"id": self.id, "status": self.status,
                "transcription_status": self.transcription_status,
                "chunks_received": self.chunks_received,
                "stitching_job_id": self.stitching_job_id}


@dataclass(frozen=True)
class Chunk:
    """One stored chunk."""

    part: int
    size_bytes: int
    md5: str
    received_at: datetime

    def to_json(self) -> dict[str, Any]:
        """One entry of a chunk list: part, size, MD5 (hex), receipt time."""
        return {"part": self.part, "size_bytes": self.size_bytes, "md5": self.md5,
                "received_at": iso(self.received_at)}


@dataclass(frozen=True)
class ChunkList:
    """The chunks a store holds and the parts missing below the highest one."""

    recording_id: str
    chunks: list[Chunk]
    missing_chunks: list[int]

    def to_json(self) -> dict[str, Any]:
        """The chunk list of ``api.md``: ``data`` by part, and ``missing_chunks``."""
        return {"recording_id": self.recording_id,
                "data": [c.to_json() for c in self.chunks],
                "missing_chunks": self.missing_chunks}


@dataclass(frozen=True)
class ChunkUploadResult:
    """Outcome of one chunk upload."""

    recording_id: str
    chunk: Chunk
    already_stored: bool
    replaced: bool

    def to_json(self) -> dict[str, Any]:
        """The chunk fields plus ``already_stored`` (same bytes) and ``replaced``."""
        return {"recording_id": self.recording_id, **self.chunk.to_json(),
                "already_stored": self.already_stored, "replaced": self.replaced}


@dataclass(frozen=True)
class UploadUrl:
    """A presigned direct-to-store upload."""

    media_id: str | None
    upload_url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The presigned upload of ``api.md``: URL, method, headers to send, expiry."""
        return {"media_id": self.media_id, "upload_url": self.upload_url,
                "method": self.method, "headers": self.headers,
                "expires_at": iso(self.expires_at)}


@dataclass(frozen=True)
class DownloadUrl:
    """A presigned download of a recording's audio."""

    download_url: str
    media_id: str
    content_type: str
    file_size_bytes: int | None
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The presigned download of ``api.md``: URL, media, content type, expiry."""
        return {"download_url": self.download_url, "media_id": self.media_id,
                "content_type": self.content_type, "file_size_bytes": self.file_size_bytes,
                "expires_at": iso(self.expires_at)}


@dataclass(frozen=True)
class Page:
    """One page of a list."""

    data: list[Any]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        """``data`` (each item's ``to_json``), ``has_more`` and ``next_cursor``."""
        return {"data": [d.to_json() for d in self.data], "has_more": self.next_cursor is not None,
                "next_cursor": self.next_cursor}


def _dt(s: str) -> datetime:
    t = parse_iso(s)
    assert t is not None
    return t
