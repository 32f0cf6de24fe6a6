"""REST routes for transcriptions (``api.md`` "Transcriptions"). Handlers only translate, as
in ``routes``; the rules live in ``tapedeck.domain.transcriptions``.

``POST /v1/recordings/{id}/transcribe`` answers 201 with the new, queued transcription;
``GET /v1/transcriptions/{id}`` the transcript (text, segments with words) once completed.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, Field

from tapedeck.domain.idempotency import StoredResponse
from tapedeck.domain.transcriptions import (
    MAX_SPEAKERS,
    PROVIDERS,
    SpeakerOptions,
    request_fingerprint,
)
from tapedeck.gateway.body import parse_json
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.routes import ON_POST, ON_RECORDING, Gateway, IdempotencyKey, RecordingId
from tapedeck.gateway.schemas import RequestModel, ResponseModel

Provider = Literal["whisper"]
assert get_args(Provider) == PROVIDERS, "gateway/transcriptions.py is out of date"
TranscriptionId = Annotated[str, Path(description="Transcription identifier (txn_…).")]


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
                responses=errors_doc("transcription_not_found"))
    async def get_transcription(request: Request,
                                transcription_id: TranscriptionId) -> Response:
        """One transcription (``transcriptions:read``; a device token: its own device's
        recordings): text, segments with word timestamps, language, model, word count."""
        p = await gw.caller(request)
        txn = await anyio.to_thread.run_sync(lambda: d.transcriptions.get(p, transcription_id))
        return JSONResponse(txn.to_json())
