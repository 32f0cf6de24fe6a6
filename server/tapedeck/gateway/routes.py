"""The REST routes of ``api.md``. Each handler only translates: authenticate, parse, call the
domain (in a worker thread), answer with the result's ``to_json()``. Every POST honours
``Idempotency-Key`` through the domain's ``Idempotency.once`` (shared with gRPC).

Status codes: 201 for a created recording and for a newly stored chunk part; 200 for
everything else (including an identical chunk re-PUT and a replaced part, and a replayed
idempotent response, which repeats the first status and adds ``Idempotent-Replayed: true``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from tapedeck.auth import Principal
from tapedeck.domain import Domain
from tapedeck.domain.idempotency import StoredResponse, create_fingerprint, fingerprint
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import error, invalid
from tapedeck.gateway import schemas as s
from tapedeck.gateway.body import (
    BodyPump,
    ClientGone,
    check_length,
    content_md5,
    declared_length,
    parse_json,
)
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.errors import ErrorRoute

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=r"^[!-~]{1,255}$",
    description="Optional. The same key and body within 24 h replay the first response; "
                "a different body → 422 idempotency_key_reused; while the first request "
                "runs → 409 idempotency_conflict. Scoped to the credential.")]
RecordingId = Annotated[str, Path(description="Recording identifier (rec_…).")]
Part = Annotated[int, Path(ge=1, le=s.MAX_PARTS, description="Chunk part, 1..max_chunks.")]
ON_RECORDING = ("recording_not_found",)
ON_POST = ("payload_too_large", "idempotency_conflict", "idempotency_key_reused")
NOT_STREAMING = ("recording_not_streaming", "recording_expired")
BEARER_OR_TOKEN: list[dict[str, list[str]]] = [{"uploadToken": []}, {"bearerAuth": []}]


class Gateway:
    """Translation helpers bound to one ``Domain`` (no state besides it)."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    @property
    def max_json_bytes(self) -> int:
        return self.domain.ctx.settings.max_json_bytes

    async def caller(self, request: Request, *, upload: bool = False,
                     token: str | None = None) -> Principal:
        """The authenticated caller. ``upload``: the chunk route, where an ``up_`` upload
        token is accepted (from the ``token`` query parameter, which wins, or the header)."""
        credential = token if token is not None else request.headers.get("authorization")
        return await anyio.to_thread.run_sync(
            lambda: self.domain.authenticate(credential, allow_upload_token=upload))

    async def respond(self, p: Principal, key: str | None, fp: str,
                      call: Callable[[], StoredResponse], *,
                      secret_field: str | None = None) -> Response:
        """Run ``call`` (once per idempotency key, if one was sent: ``Idempotency.once``,
        ``secret_field`` sealed at rest) and answer its result."""
        outcome = await anyio.to_thread.run_sync(lambda: self.domain.idempotency.once(
            p, key, fp, call, secret_field=secret_field))
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
        return JSONResponse(outcome.response.body, status_code=outcome.response.status,
                            headers=headers)


def add_routes(router: APIRouter, domain: Domain) -> None:
    """Register every route of the REST API on ``router``, bound to ``domain``. (Routes go
    straight onto the app's router, so 405 answers can list every method of a path.)"""
    gw = Gateway(domain)
    router.route_class = ErrorRoute
    _recording_routes(router, gw)
    _action_routes(router, gw)
    _chunk_routes(router, gw)


def _recording_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/recordings", status_code=201, response_model=s.CreatedRecordingOut,
            summary="Create a recording", response_description="The new recording.",
            responses=errors_doc("device_not_found", "end_user_not_found", *ON_POST),
            openapi_extra=body_doc(s.CreateRecordingRequest))
    async def create_recording(request: Request,
                               idempotency_key: IdempotencyKey = None) -> Response:
        """Create a streaming recording (``streaming: true``: status ``streaming`` with a
        ``chunk_upload_url_template``) or a single-file one (status ``pending``)."""
        p = await gw.caller(request)
        body = await parse_json(request, s.CreateRecordingRequest, gw.max_json_bytes)
        req = NewRecording(**body.model_dump())
        return await gw.respond(p, idempotency_key, create_fingerprint(req), lambda: StoredResponse(
            201, d.recordings.create(p, req).to_json()))

    @r.get("/v1/recordings", response_model=s.RecordingPageOut, summary="List recordings",
           responses=errors_doc())
    async def list_recordings(
            request: Request,
            limit: Annotated[int, Query(ge=1, le=100)] = 25,
            cursor: Annotated[str | None, Query(description="next_cursor of a previous page")]
            = None,
            device_id: str | None = None, end_user_id: str | None = None,
            status: s.RecordingStatus | None = None) -> Response:
        """Recordings newest first, one page at a time (``next_cursor`` continues)."""
        p = await gw.caller(request)
        page = await anyio.to_thread.run_sync(lambda: d.recordings.list(
            p, limit=limit, cursor=cursor, device_id=device_id, end_user_id=end_user_id,
            status=status))
        return JSONResponse(page.to_json())

    @r.get("/v1/recordings/{recording_id}", response_model=s.RecordingOut,
           summary="Get a recording", responses=errors_doc(*ON_RECORDING))
    async def get_recording(request: Request, recording_id: RecordingId) -> Response:
        """One recording."""
        p = await gw.caller(request)
        rec = await anyio.to_thread.run_sync(lambda: d.recordings.get(p, recording_id))
        return JSONResponse(rec.to_json())

    @r.delete("/v1/recordings/{recording_id}", response_model=s.DeletedOut,
              summary="Delete a recording", responses=errors_doc(*ON_RECORDING))
    async def delete_recording(request: Request, recording_id: RecordingId) -> Response:
        """Remove the recording, its audio and its transcript (event ``recording.deleted``).
        Device tokens may not delete (``forbidden``)."""
        p = await gw.caller(request)
        await anyio.to_thread.run_sync(lambda: d.recordings.delete(p, recording_id))
        return JSONResponse({"id": recording_id, "deleted": True})


def _action_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/recordings/{recording_id}/finalize", response_model=s.FinalizeOut,
            summary="Finalize a streaming recording",
            responses=errors_doc(*ON_RECORDING, *ON_POST, *NOT_STREAMING, "chunk_mismatch",
                                 "finalize_conflict", "checksum_mismatch"),
            openapi_extra=body_doc(s.FinalizeRequest))
    async def finalize_recording(request: Request, recording_id: RecordingId,
                                 idempotency_key: IdempotencyKey = None) -> Response:
        """Check that the store holds exactly parts 1..``total_chunks`` (else
        ``chunk_mismatch`` with ``missing_chunks``/``unexpected_chunks``), verify
        ``checksum_md5`` if given, and queue exactly one stitching job. Repeating it with
        the same body returns the current state; a different body → ``finalize_conflict``."""
        p = await gw.caller(request)
        body = await parse_json(request, s.FinalizeRequest, gw.max_json_bytes)
        fp = fingerprint("recordings.finalize", {"id": recording_id, **body.model_dump()})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.recordings.finalize(p, recording_id, body.total_chunks,
                                       body.final_duration_ms, body.checksum_md5).to_json()))

    @r.post("/v1/recordings/{recording_id}/upload-url", response_model=s.UploadUrlOut,
            summary="Get a direct-to-store upload URL",
            responses=errors_doc(*ON_RECORDING, *ON_POST, *NOT_STREAMING, "invalid_state"),
            openapi_extra=body_doc(s.UploadUrlRequest, required=False))
    async def create_upload_url(request: Request, recording_id: RecordingId,
                                idempotency_key: IdempotencyKey = None) -> Response:
        """A presigned PUT straight to the object store: the single file of a ``pending``
        recording, or (with ``part``) one chunk of a streaming recording."""
        p = await gw.caller(request)
        body = await parse_json(request, s.UploadUrlRequest, gw.max_json_bytes)
        fp = fingerprint("recordings.upload_url", {"id": recording_id, **body.model_dump()})
        if body.parts is not None:  # a batch: {data: [{part, upload_url, ...}, ...]}
            if body.part is not None or body.content_md5 is not None \
                    or body.size_bytes is not None:
                raise invalid("parts", "parts excludes part, content_md5 and size_bytes.")
            parts = body.parts
            return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
                200, {"data": [{"part": n, **u.to_json()} for n, u in
                               d.recordings.create_upload_urls(p, recording_id, parts)]}))
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.recordings.create_upload_url(
                p, recording_id, type=body.type, content_type=body.content_type,
                part=body.part, content_md5=body.content_md5,
                size_bytes=body.size_bytes).to_json()))

    @r.post("/v1/recordings/{recording_id}/upload-complete", response_model=s.RecordingOut,
            summary="Complete a single-file upload",
            responses=errors_doc(*ON_RECORDING, *ON_POST, "invalid_state"),
            openapi_extra=body_doc(s.EmptyRequest, required=False))
    async def complete_upload(request: Request, recording_id: RecordingId,
                              idempotency_key: IdempotencyKey = None) -> Response:
        """Verify the uploaded file is in the store; ``pending`` → ``uploaded``; queue
        stitching and transcription."""
        p = await gw.caller(request)
        await parse_json(request, s.EmptyRequest, gw.max_json_bytes)
        fp = fingerprint("recordings.upload_complete", {"id": recording_id})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.recordings.complete_upload(p, recording_id).to_json()))

    @r.post("/v1/recordings/{recording_id}/download-url", response_model=s.DownloadUrlOut,
            summary="Get a download URL for the audio",
            responses=errors_doc(*ON_RECORDING, *ON_POST, "invalid_state"),
            openapi_extra=body_doc(s.EmptyRequest, required=False))
    async def create_download_url(request: Request, recording_id: RecordingId,
                                  idempotency_key: IdempotencyKey = None) -> Response:
        """A presigned GET of the stitched (or uploaded) audio."""
        p = await gw.caller(request)
        await parse_json(request, s.EmptyRequest, gw.max_json_bytes)
        fp = fingerprint("recordings.download_url", {"id": recording_id})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.recordings.create_download_url(p, recording_id).to_json()))


def _chunk_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.get("/v1/recordings/{recording_id}/chunks", response_model=s.ChunkListOut,
           summary="List the chunks the store holds", responses=errors_doc(*ON_RECORDING))
    async def list_chunks(request: Request, recording_id: RecordingId) -> Response:
        """The stored chunks (``part``, ``size_bytes``, ``md5``, ``received_at``) and
        ``missing_chunks`` up to the highest part seen."""
        p = await gw.caller(request)
        listing = await anyio.to_thread.run_sync(lambda: d.chunks.list(p, recording_id))
        return JSONResponse(listing.to_json())

    @r.put("/v1/recordings/{recording_id}/chunks/{part}", status_code=201,
           response_model=s.ChunkUploadOut, summary="Upload one chunk (raw bytes)",
           response_description="A new part was stored.",
           responses={200: {"model": s.ChunkUploadOut,
                            "description": "Identical bytes were already stored, or "
                                           "different bytes replaced the part."},
                      **errors_doc(*ON_RECORDING, *NOT_STREAMING, "payload_too_large",
                                   "checksum_mismatch", "invalid_state", "invalid_audio",
                                   "request_timeout")},
           openapi_extra={**body_doc(None), "security": BEARER_OR_TOKEN})
    async def put_chunk(request: Request, recording_id: RecordingId, part: Part,
                        token: Annotated[str | None, Query(
                            include_in_schema=False)] = None,
                        content_md5_header: Annotated[str | None, Header(
                            alias="Content-MD5", pattern=r"^[A-Za-z0-9+/]{22}==$",
                            description="Base64 MD5 of the body; other bytes → "
                                        "checksum_mismatch, nothing stored.")] = None,
                        ) -> Response:
        """The target of ``chunk_upload_url_template``: the raw chunk bytes, authorized by
        the URL's ``token`` (an upload token bound to this recording until its
        ``expires_at``) or an ``Authorization`` header. Streamed to the store, never held in
        memory; at most ``max_chunk_bytes``. While the recording is ``streaming``, identical
        bytes succeed again and different bytes replace the part."""
        p = await gw.caller(request, upload=True, token=token)
        md5 = content_md5(content_md5_header)
        check_length(request, d.ctx.settings.max_chunk_bytes, "A chunk")
        pump = BodyPump(request.receive)
        limiter = _upload_limiter(request)
        try:
            result = await anyio.to_thread.run_sync(
                lambda: d.chunks.upload(p, recording_id, part, pump.blocks(), md5=md5,
                                        size=declared_length(request)),
                limiter=limiter)
        except ClientGone:
            raise error("invalid_request", "The client disconnected before the body ended.",
                        field="body") from None
        fresh = not (result.already_stored or result.replaced)
        return JSONResponse(result.to_json(), status_code=201 if fresh else 200,
                            headers={"ETag": f'"{result.chunk.md5}"'})

    @r.delete("/v1/recordings/{recording_id}/chunks/{part}", response_model=s.ChunkListOut,
              summary="Delete one stored chunk part while streaming",
              responses=errors_doc(*ON_RECORDING, *NOT_STREAMING, "chunk_not_found",
                                   "invalid_state"),
              openapi_extra={"security": BEARER_OR_TOKEN})
    async def delete_chunk(request: Request, recording_id: RecordingId, part: Part,
                           token: Annotated[str | None, Query(
                               include_in_schema=False)] = None) -> Response:
        """Delete every stored object of the part (e.g. a stray part above
        ``total_chunks`` that makes finalize answer ``chunk_mismatch``); same credentials as
        the chunk PUT. Returns the chunk list after the delete; ``chunk_not_found`` if the
        store holds nothing for the part."""
        p = await gw.caller(request, upload=True, token=token)
        left = await anyio.to_thread.run_sync(lambda: d.chunks.delete(p, recording_id, part))
        return JSONResponse(left.to_json())


UPLOAD_THREADS = 128


def _upload_limiter(request: Request) -> anyio.CapacityLimiter:
    """Chunk uploads hold a worker thread while their body arrives (slow devices), so they
    get their own pool (``UPLOAD_THREADS``) instead of starving the JSON routes'."""
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "upload_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(UPLOAD_THREADS)
        state.upload_limiter = limiter
    return limiter

