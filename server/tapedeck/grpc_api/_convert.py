"""Domain objects ↔ protobuf messages. Pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from tapedeck.domain.models import (
    Chunk,
    ChunkList,
    DownloadUrl,
    FinalizeResult,
    Media,
    Recording,
    UploadUrl,
)
from tapedeck.errors import invalid
from tapedeck.v1 import chunk_pb2 as cpb
from tapedeck.v1 import recording_pb2 as pb


def ts(t: datetime | None) -> Timestamp | None:
    """A Timestamp, or None (field left unset)."""
    if t is None:
        return None
    out = Timestamp()
    out.FromDatetime(t.astimezone(UTC))
    return out


def from_ts(msg: Timestamp, present: bool) -> datetime | None:
    """A datetime from a Timestamp field that may be unset."""
    return msg.ToDatetime(tzinfo=UTC) if present else None


def enum_name(enum: EnumDescriptor, prefix: str, value: int, field: str) -> str | None:
    """The lower-case name of ``value`` without ``prefix``; None for 0 (UNSPECIFIED);
    ``invalid_request`` naming ``field`` for a number ``enum`` does not define."""
    if value == 0:
        return None
    known = enum.values_by_number.get(value)
    if known is None:
        raise invalid(field, f"Unknown {field} {value}.")
    return known.name.removeprefix(prefix).lower()


def page_limit(page_size: int, default: int = 25) -> int:
    """A list call's ``limit`` from ``page_size``: 0 → ``default``; negative is invalid."""
    if page_size < 0:
        raise invalid("page_size", "page_size must not be negative.")
    return page_size or default


def status_enum(status: str) -> int:
    return int(pb.RecordingStatus.Value("RECORDING_STATUS_" + status.upper()))


def status_name(value: int) -> str | None:
    """Lowercase status name, None for UNSPECIFIED; ``invalid_request`` for unknown values."""
    return enum_name(pb.RecordingStatus.DESCRIPTOR, "RECORDING_STATUS_", value, "status")


def transcription_enum(status: str) -> int:
    return int(pb.TranscriptionStatus.Value("TRANSCRIPTION_STATUS_" + status.upper()))


def codec_enum(codec: str) -> int:
    return int(pb.Codec.Value("CODEC_" + codec.upper()))


def codec_name(value: int) -> str:
    """Lowercase codec name, ``opus`` for UNSPECIFIED; ``invalid_request`` for unknown."""
    return enum_name(pb.Codec.DESCRIPTOR, "CODEC_", value, "codec") or "opus"


def media_pb(m: Media) -> pb.Media:
    out = pb.Media(id=m.id, type=m.type, mime_type=m.mime_type, status=m.status,
                   create_time=ts(m.created_at))
    if m.file_size_bytes is not None:
        out.file_size_bytes = m.file_size_bytes
    return out


def recording_pb(r: Recording, template: str | None = None) -> pb.Recording:
    out = pb.Recording(
        id=r.id, device_id=r.device_id or "", end_user_id=r.end_user_id or "",
        name=r.name or "", status=status_enum(r.status), codec=codec_enum(r.codec),  # type: ignore[arg-type]
        streaming=r.streaming, mime_type=r.mime_type or "",
        start_time=ts(r.started_at), end_time=ts(r.ended_at), create_time=ts(r.created_at),
        upload_time=ts(r.uploaded_at), chunks_received=r.chunks_received,
        max_chunks=r.max_chunks or 0, expire_time=ts(r.expires_at),
        transcription_status=transcription_enum(r.transcription_status),  # type: ignore[arg-type]
        transcription_id=r.transcription_id or "", stitching_job_id=r.stitching_job_id or "",
        media=[media_pb(m) for m in r.media], metadata=r.metadata,
        chunk_upload_url_template=template or "", finalized_by=r.finalized_by or "",
    )
    for name in ("duration_ms", "file_size_bytes", "estimated_duration_ms", "chunk_duration_ms"):
        value = getattr(r, name)
        if value is not None:
            setattr(out, name, value)
    if r.failure_type:
        out.failure.type, out.failure.message = r.failure_type, r.failure_message or ""
    for gap in r.gaps or []:
        out.gaps.add(first_part=gap.get("first_part", 0), last_part=gap.get("last_part") or 0,
                     start_ms=gap.get("start_ms") or 0, end_ms=gap.get("end_ms") or 0)
    return out


def finalize_pb(f: FinalizeResult) -> pb.FinalizeRecordingResponse:
    return pb.FinalizeRecordingResponse(
        id=f.id, status=status_enum(f.status),  # type: ignore[arg-type]
        transcription_status=transcription_enum(f.transcription_status),  # type: ignore[arg-type]
        chunks_received=f.chunks_received, stitching_job_id=f.stitching_job_id or "")


def chunk_pb(c: Chunk) -> cpb.Chunk:
    return cpb.Chunk(part=c.part, size_bytes=c.size_bytes, md5=c.md5,
                     receive_time=ts(c.received_at))


def chunk_list_pb(cl: ChunkList) -> cpb.ListChunksResponse:
    return cpb.ListChunksResponse(chunks=[chunk_pb(c) for c in cl.chunks],
                                  missing_chunks=cl.missing_chunks)


def upload_url_pb(u: UploadUrl) -> pb.CreateUploadUrlResponse:
    return pb.CreateUploadUrlResponse(media_id=u.media_id or "", upload_url=u.upload_url,
                                      method=u.method, headers=u.headers,
                                      expire_time=ts(u.expires_at))


def download_url_pb(d: DownloadUrl) -> pb.CreateDownloadUrlResponse:
    return pb.CreateDownloadUrlResponse(
        download_url=d.download_url, media_id=d.media_id, content_type=d.content_type,
        file_size_bytes=d.file_size_bytes or 0, expire_time=ts(d.expires_at))
