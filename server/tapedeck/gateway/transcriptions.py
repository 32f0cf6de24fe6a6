"""REST routes for transcriptions (``api.md`` "Transcriptions"). Handlers only translate, as
in ``routes``; the rules live in ``tapedeck.domain.transcriptions``.

``POST /v1/recordings/{id}/transcribe`` answers 201 with the new, queued transcription;
``GET /v1/transcriptions/{id}`` the transcript (text, segments with words) once completed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal, get_args

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AwareDatetime, Field

from tapedeck.domain import exports
from tapedeck.domain.idempotency import StoredResponse
from tapedeck.domain.transcriptions import (
    MAX_SPEAKERS,
    PROVIDERS,
    SpeakerOptions,
    WatchUpdate,
    request_fingerprint,
)
from tapedeck.gateway.body import parse_json
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.routes import ON_POST, ON_RECORDING, Gateway, IdempotencyKey, RecordingId
from tapedeck.gateway.schemas import RequestModel, ResponseModel

Provider = Literal["whisper"]
assert get_args(Provider) == PROVIDERS, "gateway/transcriptions.py is out of date"
TranscriptionId = Annotated[str, Path(description="Transcription identifier (txn_…).")]
Format = Literal["json", "txt", "srt", "vtt"]
assert get_args(Format) == exports.FORMATS, "gateway/transcriptions.py is out of date"
ExportFormat = Annotated[Format | None, Query(
    description="json (default: the transcription object), txt, srt or vtt (a file).")]
_FILE = {"schema": {"type": "string"}}
EXPORT_DOC: dict[int | str, dict[str, Any]] = {200: {
    "description": "The transcription object, or with format=txt|srt|vtt the transcript file.",
    "content": {"text/plain": _FILE, "application/x-subrip": _FILE, "text/vtt": _FILE}}}


# -- request bodies ----------------------------------------------------------------------
class TranscribeRequest(RequestModel):
    """Body of ``POST /v1/recordings/{id}/transcribe`` (may be empty)."""

    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}$")] | None = Field(
        default=None, description="ISO 639-1 code (e.g. en); omitted → detected from the "
                                  "audio. A language the engine cannot do fails the "
                                  "transcription with reason unsupported_language.")
    provider: Provider = Field(default="whisper", description="Transcription engine.")
    diarize: bool = Field(default=True, description="Label speakers (S1, S2, … on segments "
                                                    "and words, and a speakers list).")
    min_speakers: Annotated[int, Field(ge=1, le=MAX_SPEAKERS)] | None = Field(
        default=None, description="Fewest speakers to find (default: estimated).")
    max_speakers: Annotated[int, Field(ge=1, le=MAX_SPEAKERS)] | None = Field(
        default=None, description="Most speakers to find (default: estimated).")
    speakers_expected: Annotated[int, Field(ge=1, le=MAX_SPEAKERS)] | None = Field(
        default=None, description="Exactly this many speakers (default: estimated).")

    def speaker_options(self) -> SpeakerOptions:
        return SpeakerOptions(self.diarize, self.min_speakers, self.max_speakers,
                              self.speakers_expected)


BODY_MODELS = (TranscribeRequest,)


# -- responses ---------------------------------------------------------------------------
class WordOut(ResponseModel):
    """One word: milliseconds from the start of the recording, confidence in [0, 1]."""

    word: str
    start_ms: int
    end_ms: int
    confidence: float
    speaker: str | None = None


class SpeakerOut(ResponseModel):
    """A speaker of the transcript: label (``S1``, … in order of first appearance), labelled
    talk time, and the end user whose voice profile matched (else null)."""

    label: str
    talk_time_ms: int
    end_user_id: str | None


class SegmentOut(ResponseModel):
    """A stretch of speech with its words, in time order."""

    start_ms: int
    end_ms: int
    text: str
    confidence: float
    speaker: str | None
    words: list[WordOut]


class TranscriptionErrorOut(ResponseModel):
    """Why a transcription failed: ``type`` ``transcription_failed`` with a ``reason``
    (``undecodable_audio``, ``unsupported_language``, ``engine_error``,
    ``engine_unavailable``, ``missing_audio``, ``storage_unavailable``,
    ``internal_error``), or the stitching error that left no audio (e.g. ``invalid_audio``)."""

    type: str
    message: str
    reason: str | None = None


class ParagraphOut(ResponseModel):
    """Consecutive segments of one speaker without a long pause (``segment_count`` segments
    from index ``first_segment``), their texts joined: for readers that want prose."""

    start_ms: int
    end_ms: int
    speaker: str | None
    text: str
    first_segment: int
    segment_count: int


class TranscriptionOut(ResponseModel):
    """The transcription object of ``api.md``. ``text``, ``word_count``, ``model`` and
    ``duration_ms`` are null until it completes; silent audio completes with empty text."""

    id: str
    recording_id: str
    status: Literal["queued", "processing", "completed", "failed"]
    language: str | None
    provider: str
    model: str | None
    duration_ms: int | None
    text: str | None
    segments: list[SegmentOut]
    word_count: int | None
    error: TranscriptionErrorOut | None
    created_at: AwareDatetime
    completed_at: AwareDatetime | None
    paragraphs: list[ParagraphOut]
    live: bool | None = Field(default=None, description="Present (true) for a live "
                              "transcription, made from the chunks while the recording "
                              "streamed.")
    covered_ms: int | None = Field(default=None, description="Live: milliseconds of audio "
                                   "transcribed so far (while processing, segments holds "
                                   "the segments so far).")
    skipped_ms: int | None = Field(default=None, description="Live: milliseconds skipped "
                                   "as non-speech by voice-activity detection.")
    speakers: list[SpeakerOut] | None = Field(
        default=None, description="Speakers found, once completed with diarization (null "
                                  "when diarization was off).")


# -- routes ------------------------------------------------------------------------------
def add_transcription_routes(router: APIRouter, gw: Gateway) -> None:
    """Register the transcription routes on ``router`` (the app's router, whose
    ``route_class`` ``routes.add_routes`` has already set)."""
    d = gw.domain

    @router.post("/v1/recordings/{recording_id}/transcribe", status_code=201,
                 response_model=TranscriptionOut, summary="Transcribe a recording",
                 responses=errors_doc(*ON_RECORDING, *ON_POST, "invalid_state"),
                 openapi_extra=body_doc(TranscribeRequest, required=False))
    async def transcribe_recording(request: Request, recording_id: RecordingId,
                                   idempotency_key: IdempotencyKey = None) -> Response:
        """Queue a new transcription (``transcriptions:write``) of a recording whose audio
        is complete (status ``completed``; else ``invalid_state``, also while its current
        transcription is still queued or processing). It becomes the recording's
        ``transcription_id``; event ``transcription.queued``."""
        p = await gw.caller(request)
        body = await parse_json(request, TranscribeRequest, gw.max_json_bytes)
        options = body.speaker_options()
        fp = request_fingerprint(recording_id, body.language, body.provider, options)
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            201, d.transcriptions.request(p, recording_id, body.language,
                                          body.provider, options).to_json()))

    @router.get("/v1/transcriptions/{transcription_id}", response_model=TranscriptionOut,
                summary="Get a transcription",
                responses={**EXPORT_DOC, **errors_doc("transcription_not_found",
                                                      "invalid_state")})
    async def get_transcription(request: Request, transcription_id: TranscriptionId,
                                format: ExportFormat = None) -> Response:
        """One transcription (``transcriptions:read``; a device token: its own device's
        recordings): text, segments with word timestamps, paragraphs, language, model, word
        count. ``format`` ``txt``, ``srt`` or ``vtt``: the completed transcript as a file
        (``Content-Disposition: attachment``; ``invalid_state`` before it completes)."""
        p = await gw.caller(request)
        fmt = exports.check_format(format)
        txn = await anyio.to_thread.run_sync(lambda: d.transcriptions.get(p, transcription_id))
        if fmt == "json":
            return JSONResponse(txn.to_json())
        out = exports.render(txn.id, txn.status, txn.segments, fmt)
        return Response(out.body, media_type=out.content_type, headers={
            "Content-Disposition": f'attachment; filename="{out.filename}"'})

    add_watch_route(router, gw)


#: SSE: a ``progress`` event at least every 15 s (0.25 s polls), so a gone client is noticed.
KEEPALIVE_POLLS = 60


def sse_events(updates: Iterator[WatchUpdate]) -> Iterator[str]:
    """``Transcriptions.watch`` as Server-Sent Events: ``segment`` (one per new segment,
    data = the segment object), ``progress`` (data ``{"covered_ms"}``), and a last
    ``completed`` or ``failed`` whose data is the transcription object."""
    for update in updates:
        for segment in update.segments:
            yield f"event: segment\ndata: {json.dumps(segment, ensure_ascii=False)}\n\n"
        if update.transcription is not None:
            body = json.dumps(update.transcription.to_json(), ensure_ascii=False)
            yield f"event: {update.transcription.status}\ndata: {body}\n\n"
        else:
            yield f"event: progress\ndata: {json.dumps({'covered_ms': update.covered_ms})}\n\n"


def add_watch_route(router: APIRouter, gw: Gateway) -> None:
    """``GET /v1/transcriptions/{id}/events``: the live view as Server-Sent Events."""
    d = gw.domain

    @router.get("/v1/transcriptions/{transcription_id}/events",
                summary="Follow a transcription (Server-Sent Events)",
                responses={**errors_doc("transcription_not_found"),
                           200: {"content": {"text/event-stream": {}}}},
                response_class=StreamingResponse)
    async def watch_transcription(request: Request,
                                  transcription_id: TranscriptionId) -> Response:
        """Segments as they are produced while a live transcription is processing (event
        ``segment``, data = a segment; ``progress`` with ``covered_ms``), then one
        ``completed`` or ``failed`` event with the transcription object, and the stream
        ends. Same authorization as ``GET /v1/transcriptions/{id}``."""
        p = await gw.caller(request)
        # authorization and existence errors answer before the stream starts
        await anyio.to_thread.run_sync(lambda: d.transcriptions.get(p, transcription_id))
        stop = threading.Event()
        updates = sse_events(d.transcriptions.watch(p, transcription_id, stop=stop,
                                                    keepalive_polls=KEEPALIVE_POLLS))

        async def body() -> AsyncIterator[str]:
            try:
                while True:
                    chunk = await anyio.to_thread.run_sync(next, updates, None)
                    if chunk is None:
                        return
                    yield chunk
                    if await request.is_disconnected():
                        return
            finally:
                stop.set()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})
