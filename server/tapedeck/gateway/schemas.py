"""Request and response models of the REST API: they validate request bodies and generate
the OpenAPI document. They hold no rules (the domain re-checks everything); the limits here
only mirror the domain's so that the document tells clients the truth.

Request bodies are strict: JSON types must match exactly (``"12"`` is not an integer, ``1`` is
not a boolean), timestamps are RFC 3339 strings with a time zone (``Z`` or an offset), enum
strings are lowercase, and an unknown field is ``invalid_request`` naming it — a typo such as
``checksum_md`` must not silently skip a check. Response models mirror the ``to_json`` shapes
of ``tapedeck.domain.models`` exactly (they forbid extra fields, so tests catch any drift).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tapedeck.domain.models import CODECS, RECORDING_STATUSES, TRANSCRIPTION_STATUSES
from tapedeck.domain.recordings import MAX_DURATION_MS

MAX_PARTS = 10_000
Codec = Literal["opus", "wav", "mp3", "m4a", "webm", "flac", "ogg"]
RecordingStatus = Literal["pending", "streaming", "uploaded", "stitching", "completed",
                          "failed", "expired"]
TranscriptionStatus = Literal["none", "queued", "processing", "completed", "failed"]
# The literals above must be exactly the domain's lists (checked at import time).
assert (get_args(Codec), get_args(RecordingStatus), get_args(TranscriptionStatus)) == (
    CODECS, RECORDING_STATUSES, TRANSCRIPTION_STATUSES), "schemas.py is out of date"
Id = Annotated[str, Field(min_length=1, max_length=100)]
DurationMs = Annotated[int, Field(ge=0, le=MAX_DURATION_MS)]
Md5Hex = Annotated[str, Field(pattern=r"^([0-9a-fA-F]{32})?$")]
Md5Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{22}==$")]
Metadata = Annotated[dict[Annotated[str, Field(max_length=40)], Annotated[str, Field(max_length=500)]],
                     Field(max_length=50)]


class RequestModel(BaseModel):
    """Base of every request body: strict types (no coercion), unknown members rejected."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ResponseModel(BaseModel):
    """Base of every response model: a closed object (documents no extra members)."""

    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------
class CreateRecordingRequest(RequestModel):
    """Body of ``POST /v1/recordings``. With a device token, ``device_id`` and
    ``end_user_id`` come from the token and the body's values are ignored."""

    device_id: Id | None = None
    end_user_id: Id | None = None
    name: Annotated[str, Field(max_length=500)] | None = None
    started_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339 with a time zone, between 1970 and 2200.")
    ended_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339 with a time zone, not before started_at.")
    estimated_duration_ms: DurationMs | None = None
    codec: Codec = Field(default="opus", description="Streaming recordings must use opus.")
    streaming: bool = False
    chunk_duration_ms: Annotated[int, Field(ge=1000, le=MAX_DURATION_MS)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class FinalizeRequest(RequestModel):
    """Body of ``POST /v1/recordings/{id}/finalize`` (the original document's three fields)."""

    total_chunks: Annotated[int, Field(ge=1, le=MAX_PARTS)] = Field(
        description="The store must hold exactly parts 1..total_chunks.")
    final_duration_ms: DurationMs = Field(description="Actual duration in milliseconds.")
    checksum_md5: Md5Hex | None = Field(
        default=None, description="Hex MD5 of all chunk bytes concatenated in part order.")


MAX_SIZE_BYTES = 5 * 1024**3  # one S3 PUT


class UploadUrlRequest(RequestModel):
    """Body of ``POST /v1/recordings/{id}/upload-url``."""

    type: Literal["audio"] = "audio"
    content_type: Annotated[str, Field(max_length=255)] | None = None
    part: Annotated[int, Field(ge=1, le=MAX_PARTS)] | None = Field(
        default=None, description="Streaming recordings only: the chunk part to upload.")
    content_md5: Md5Base64 | None = Field(
        default=None, description="Base64 MD5; the store then refuses any other bytes.")
    size_bytes: Annotated[int, Field(ge=1, le=MAX_SIZE_BYTES)] | None = Field(
        default=None, description="Exact size of the bytes; the URL then refuses any other "
                                  "size (a chunk part above max_chunk_bytes: payload_too_large).")
    parts: Annotated[list[Annotated[int, Field(ge=1, le=MAX_PARTS)]],
                     Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="Streaming recordings only, instead of part: URLs for "
                                  "several parts at once, answered as {data: [...]}.")


class EmptyRequest(RequestModel):
    """A body with no fields (``{}`` or nothing at all)."""


# -- responses ---------------------------------------------------------------------------
class MediaOut(ResponseModel):
    """One stored audio object of a recording."""

    id: str
    type: str
    mime_type: str
    file_size_bytes: int | None
    status: str
    created_at: AwareDatetime


class FailureOut(ResponseModel):
    """Why a recording failed."""

    type: str
    message: str | None


class RecordingOut(ResponseModel):
    """The recording object of ``api.md``."""

    id: str
    device_id: str | None
    end_user_id: str | None
    name: str | None
    status: RecordingStatus
    codec: Codec
    streaming: bool
    duration_ms: int | None
    file_size_bytes: int | None
    mime_type: str | None
    started_at: AwareDatetime | None
    ended_at: AwareDatetime | None
    created_at: AwareDatetime
    uploaded_at: AwareDatetime | None
    chunks_received: int
    max_chunks: int | None
    expires_at: AwareDatetime | None
    transcription_status: TranscriptionStatus
    transcription_id: str | None
    stitching_job_id: str | None
    media: list[MediaOut]
    metadata: dict[str, str]
    failure: FailureOut | None
    finalized_by: str | None = Field(
        default=None, description="Present once finalized: device or expiry.")
    gaps: list[dict[str, Any]] | None = Field(
        default=None, description="Present when finalized by expiry with missing parts.")


class CreatedRecordingOut(RecordingOut):
    """A new recording; streaming ones carry ``chunk_upload_url_template``."""

    chunk_upload_url_template: str | None = Field(
        default=None, description="Streaming only: substitute the part number for the "
        "literal {part} and PUT the raw chunk bytes there (the URL carries an upload token).")


class RecordingPageOut(ResponseModel):
    """One page of recordings, newest first."""

    data: list[RecordingOut]
    has_more: bool
    next_cursor: str | None


class DeletedOut(ResponseModel):
    """The answer to a delete."""

    id: str
    deleted: bool


class FinalizeOut(ResponseModel):
    """The finalize response of the original document, field for field."""

    id: str
    status: RecordingStatus
    transcription_status: TranscriptionStatus
    chunks_received: int
    stitching_job_id: str | None


class ChunkOut(ResponseModel):
    """One chunk the store holds."""

    part: int
    size_bytes: int
    md5: str
    received_at: AwareDatetime


class ChunkListOut(ResponseModel):
    """The chunks the store holds, and the parts missing up to the highest one."""

    recording_id: str
    data: list[ChunkOut]
    missing_chunks: list[int]


class ChunkUploadOut(ResponseModel):
    """The stored chunk; ``already_stored``: identical bytes were there; ``replaced``:
    different bytes were replaced (allowed while streaming)."""

    recording_id: str
    part: int
    size_bytes: int
    md5: str
    received_at: AwareDatetime
    already_stored: bool
    replaced: bool


class UploadUrlOut(ResponseModel):
    """A presigned direct-to-store upload."""

    media_id: str | None
    upload_url: str
    method: Literal["PUT"]
    headers: dict[str, str]
    expires_at: AwareDatetime


class DownloadUrlOut(ResponseModel):
    """A presigned download of the recording's audio."""

    download_url: str
    media_id: str
    content_type: str
    file_size_bytes: int | None
    expires_at: AwareDatetime


