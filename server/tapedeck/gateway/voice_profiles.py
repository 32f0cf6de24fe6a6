"""REST routes for voice profiles (``tapedeck.domain.voice_profiles``); handlers translate.

- ``POST /v1/end-users/{id}/voice-profiles``: JSON ``{recording_id, start_ms, end_ms}``
  enrolls from a span of a recording; any other ``Content-Type`` (``audio/wav``,
  ``audio/ogg``, ``application/octet-stream``, …) is an uploaded sample (at most
  ``MAX_SAMPLE_BYTES``). 201 with the profile.
- ``GET /v1/end-users/{id}/voice-profiles?limit=1..100 (25)&cursor=``: ``{data: [...],
  has_more, next_cursor}``, oldest first.
- ``DELETE /v1/end-users/{id}/voice-profiles/{vp_id}``: ``{id, deleted: true}``.
- ``DELETE /v1/end-users/{id}``: deletes the end user and their voice profiles; recordings
  stay, unbound (``tapedeck.domain.end_users``). ``{id, deleted: true, voice_profiles_deleted,
  recordings_unbound, devices_unbound, transcripts_unnamed}``.
"""

from __future__ import annotations

import hashlib
import io
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, Field

from tapedeck.domain.idempotency import StoredResponse, fingerprint
from tapedeck.gateway.body import parse_json, read_limited
from tapedeck.gateway.docs import errors_doc
from tapedeck.gateway.routes import ON_POST, Gateway, IdempotencyKey
from tapedeck.gateway.schemas import RequestModel, ResponseModel

MAX_SAMPLE_BYTES = 32 * 1024 * 1024
EndUserId = Annotated[str, Path(description="End user identifier (eu_…).")]
ProfileId = Annotated[str, Path(description="Voice profile identifier (vp_…).")]


class EnrollFromRecording(RequestModel):
    """Enroll a voice from ``[start_ms, end_ms)`` of a completed recording of the project."""

    recording_id: Annotated[str, Field(min_length=1, max_length=100)]
    start_ms: Annotated[int, Field(ge=0)]
    end_ms: Annotated[int, Field(gt=0)]


BODY_MODELS = (EnrollFromRecording,)


class VoiceProfileOut(ResponseModel):
    """A voice profile (its embedding is never returned)."""

    id: str
    end_user_id: str
    source: str = Field(description="recording or upload")
    recording_id: str | None
    start_ms: int | None
    end_ms: int | None
    speech_ms: int = Field(description="Speech found in the sample, milliseconds.")
    created_at: AwareDatetime


class VoiceProfileList(ResponseModel):
    data: list[VoiceProfileOut]
    has_more: bool
    next_cursor: str | None


class EndUserDeleted(ResponseModel):
    """What deleting an end user did (their recordings are kept, unbound)."""

    id: str
    deleted: bool
    voice_profiles_deleted: int
    recordings_unbound: int
    devices_unbound: int
    transcripts_unnamed: int


class VoiceProfileDeleted(ResponseModel):
    id: str
    deleted: bool


def add_voice_profile_routes(r: APIRouter, gw: Gateway) -> None:
    """Register the voice profile routes."""
    d = gw.domain
    base = "/v1/end-users/{end_user_id}/voice-profiles"

    @r.post(base, status_code=201, response_model=VoiceProfileOut, summary="Enroll a voice",
            responses=errors_doc("end_user_not_found", "recording_not_found",
                                 "invalid_state", *ON_POST))
    async def create_voice_profile(request: Request, end_user_id: EndUserId,
                                   idempotency_key: IdempotencyKey = None) -> Response:
        """Enroll the end user's voice (``end_users:write``) from a recording span (JSON
        body) or an uploaded audio sample (any other content type); at least 3 s of
        speech."""
        p = await gw.caller(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        vps = d.voice_profiles
        if kind in ("application/json", ""):
            body = await parse_json(request, EnrollFromRecording, gw.max_json_bytes)
            fp = fingerprint("voice_profiles.create", {"end_user_id": end_user_id,
                                                       **body.model_dump()})
            return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
                201, vps.create_from_recording(p, end_user_id, body.recording_id,
                                               body.start_ms, body.end_ms).to_json()))
        raw = await read_limited(request, MAX_SAMPLE_BYTES)
        fp = fingerprint("voice_profiles.create", {"end_user_id": end_user_id,
                                                   "sample_sha256": hashlib.sha256(raw).hexdigest()})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            201, vps.create_from_sample(p, end_user_id, io.BytesIO(raw)).to_json()))

    @r.get(base, response_model=VoiceProfileList, summary="List an end user's voice profiles",
           responses=errors_doc("end_user_not_found"))
    async def list_voice_profiles(
            request: Request, end_user_id: EndUserId,
            limit: Annotated[int, Query(ge=1, le=100)] = 25,
            cursor: Annotated[str | None, Query(description="next_cursor of a previous page")]
            = None) -> Response:
        """One page of the end user's profiles, oldest first (``end_users:read``)."""
        p = await gw.caller(request)
        page = await anyio.to_thread.run_sync(
            lambda: d.voice_profiles.list(p, end_user_id, limit=limit, cursor=cursor))
        return JSONResponse(page.to_json())

    @r.delete(base + "/{profile_id}", response_model=VoiceProfileDeleted,
              summary="Delete a voice profile", responses=errors_doc("voice_profile_not_found"))
    async def delete_voice_profile(request: Request, end_user_id: EndUserId,
                                   profile_id: ProfileId) -> Response:
        """Delete the profile and its embedding (``end_users:write``)."""
        p = await gw.caller(request)
        await anyio.to_thread.run_sync(
            lambda: d.voice_profiles.delete(p, end_user_id, profile_id))
        return JSONResponse({"id": profile_id, "deleted": True})

    @r.delete("/v1/end-users/{end_user_id}", response_model=EndUserDeleted,
              summary="Delete an end user", responses=errors_doc("end_user_not_found"))
    async def delete_end_user(request: Request, end_user_id: EndUserId) -> Response:
        """Delete the end user and their voice profiles (``end_users:write``); their
        recordings and transcripts stay, without an end user; their devices are unbound."""
        p = await gw.caller(request)
        done = await anyio.to_thread.run_sync(lambda: d.end_users.delete(p, end_user_id))
        return JSONResponse(done.to_json())
