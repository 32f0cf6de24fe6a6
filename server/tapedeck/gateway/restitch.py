"""``POST /v1/recordings/{id}/stitch``: re-run the stitch job of a failed recording
(``tapedeck.domain.restitch``; the handler only translates)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tapedeck.domain.idempotency import StoredResponse, fingerprint
from tapedeck.domain.restitch import restitch
from tapedeck.gateway import schemas as s
from tapedeck.gateway.body import parse_json
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.routes import ON_POST, ON_RECORDING, Gateway, IdempotencyKey, RecordingId


def add_restitch_route(r: APIRouter, gw: Gateway) -> None:
    """Register ``POST /v1/recordings/{id}/stitch``."""

    @r.post("/v1/recordings/{recording_id}/stitch", response_model=s.RecordingOut,
            summary="Re-run stitching of a failed recording",
            responses=errors_doc(*ON_RECORDING, *ON_POST, "invalid_state"),
            openapi_extra=body_doc(s.EmptyRequest, required=False))
    async def restitch_recording(request: Request, recording_id: RecordingId,
                                 idempotency_key: IdempotencyKey = None) -> Response:
        """Queue a new stitch job (``recordings:write``; not a device token) for a
        ``failed`` recording whose audio was complete: it goes back to ``uploaded`` with its
        failure cleared, and a failed transcription is queued again
        (``transcription.queued``). ``invalid_state`` for any other status or while a stitch
        job is queued or running."""
        p = await gw.caller(request)
        await parse_json(request, s.EmptyRequest, gw.max_json_bytes)
        fp = fingerprint("recordings.restitch", {"id": recording_id})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, restitch(gw.domain.ctx, p, recording_id).to_json()))
