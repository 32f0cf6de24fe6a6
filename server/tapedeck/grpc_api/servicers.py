"""RecordingService and ChunkService: authenticate, translate, call the domain. No rules here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tapedeck.auth import Principal
from tapedeck.domain import Domain
from tapedeck.domain.idempotency import StoredResponse, create_fingerprint
from tapedeck.domain.models import CreatedRecording, Recording
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import invalid
from tapedeck.grpc_api import _convert as cv
from tapedeck.grpc_api._errors import translate_errors
from tapedeck.v1 import chunk_pb2 as cpb
from tapedeck.v1 import chunk_pb2_grpc, recording_pb2_grpc
from tapedeck.v1 import recording_pb2 as pb


def principal(domain: Domain, context: grpc.ServicerContext, *,
              allow_upload_token: bool = False) -> Principal:
    """The caller, from the ``authorization`` metadata (rate limit applied)."""
    md = dict(context.invocation_metadata())
    auth = md.get("authorization")
    return domain.authenticate(auth if isinstance(auth, str) else None,
                               allow_upload_token=allow_upload_token)


def _opt(msg: object, name: str) -> int | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[attr-defined]


class RecordingServicer(recording_pb2_grpc.RecordingServiceServicer):
    """tapedeck.v1.RecordingService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def CreateRecording(self, request: pb.CreateRecordingRequest,
                        context: grpc.ServicerContext) -> pb.CreateRecordingResponse:
        p = principal(self._d, context)
        req = NewRecording(
            device_id=request.device_id or None, end_user_id=request.end_user_id or None,
            name=request.name or None,
            started_at=cv.from_ts(request.start_time, request.HasField("start_time")),
            ended_at=cv.from_ts(request.end_time, request.HasField("end_time")),
            estimated_duration_ms=_opt(request, "estimated_duration_ms"),
            codec=cv.codec_name(request.codec), streaming=request.streaming,
            chunk_duration_ms=_opt(request, "chunk_duration_ms"),
            metadata=dict(request.metadata))
        created = self._create_once(p, req, request.idempotency_key or None)
        return pb.CreateRecordingResponse(
            recording=cv.recording_pb(created.recording, created.chunk_upload_url_template))

    def _create_once(self, p: Principal, req: NewRecording,
                     key: str | None) -> CreatedRecording:
        """Create (under the idempotency key, if one was sent: ``Idempotency.once``); a
        replay rebuilds the first response."""
        made: list[CreatedRecording] = []

        def call() -> StoredResponse:
            made.append(self._d.recordings.create(p, req))
            return StoredResponse(201, made[0].to_json())

        outcome = self._d.idempotency.once(p, key, create_fingerprint(req), call,
                                           key_field="idempotency_key")
        if made:
            return made[0]
        body = outcome.response.body
        return CreatedRecording(Recording.from_json(body, p.project_id),
                                body.get("chunk_upload_url_template"))

    @translate_errors
    def GetRecording(self, request: pb.GetRecordingRequest,
                     context: grpc.ServicerContext) -> pb.GetRecordingResponse:
        rec = self._d.recordings.get(principal(self._d, context), request.id)
        return pb.GetRecordingResponse(recording=cv.recording_pb(rec))

    @translate_errors
    def ListRecordings(self, request: pb.ListRecordingsRequest,
                       context: grpc.ServicerContext) -> pb.ListRecordingsResponse:
        page = self._d.recordings.list(
            principal(self._d, context), limit=cv.page_limit(request.page_size),
            cursor=request.page_token or None, device_id=request.device_id or None,
            end_user_id=request.end_user_id or None, status=cv.status_name(request.status))
        return pb.ListRecordingsResponse(recordings=[cv.recording_pb(r) for r in page.data],
                                         next_page_token=page.next_cursor or "")

    @translate_errors
    def FinalizeRecording(self, request: pb.FinalizeRecordingRequest,
                          context: grpc.ServicerContext) -> pb.FinalizeRecordingResponse:
        result = self._d.recordings.finalize(
            principal(self._d, context), request.id, request.total_chunks,
            request.final_duration_ms, request.checksum_md5 or None)
        return cv.finalize_pb(result)

    @translate_errors
    def DeleteRecording(self, request: pb.DeleteRecordingRequest,
                        context: grpc.ServicerContext) -> pb.DeleteRecordingResponse:
        self._d.recordings.delete(principal(self._d, context), request.id)
        return pb.DeleteRecordingResponse(id=request.id, deleted=True)

    @translate_errors
    def CreateUploadUrl(self, request: pb.CreateUploadUrlRequest,
                        context: grpc.ServicerContext) -> pb.CreateUploadUrlResponse:
        url = self._d.recordings.create_upload_url(
            principal(self._d, context), request.id, type=request.type or "audio",
            content_type=request.content_type or None, part=request.part or None,
            content_md5=request.content_md5 or None,
            size_bytes=request.size_bytes if request.HasField("size_bytes") else None)
        return cv.upload_url_pb(url)

    @translate_errors
    def CompleteUpload(self, request: pb.CompleteUploadRequest,
                       context: grpc.ServicerContext) -> pb.CompleteUploadResponse:
        rec = self._d.recordings.complete_upload(principal(self._d, context), request.id)
        return pb.CompleteUploadResponse(recording=cv.recording_pb(rec))

    @translate_errors
    def CreateDownloadUrl(self, request: pb.CreateDownloadUrlRequest,
                          context: grpc.ServicerContext) -> pb.CreateDownloadUrlResponse:
        url = self._d.recordings.create_download_url(principal(self._d, context), request.id)
        return cv.download_url_pb(url)


class ChunkServicer(chunk_pb2_grpc.ChunkServiceServicer):
    """tapedeck.v1.ChunkService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def UploadChunk(self, request_iterator: Iterator[cpb.UploadChunkRequest],
                    context: grpc.ServicerContext) -> cpb.UploadChunkResponse:
        p = principal(self._d, context, allow_upload_token=True)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("content") != "header":
            raise invalid("header", "The first UploadChunk message must carry the header.")
        h = first.header
        result = self._d.chunks.upload(
            p, h.recording_id, h.part, _data(request_iterator), md5=h.md5 or None,
            sha256=h.sha256 or None, require_checksum=True,
            size=h.size_bytes if h.HasField("size_bytes") else None)
        return cpb.UploadChunkResponse(chunk=cv.chunk_pb(result.chunk),
                                       already_stored=result.already_stored,
                                       replaced=result.replaced)

    @translate_errors
    def ListChunks(self, request: cpb.ListChunksRequest,
                   context: grpc.ServicerContext) -> cpb.ListChunksResponse:
        return cv.chunk_list_pb(
            self._d.chunks.list(principal(self._d, context), request.recording_id))

    @translate_errors
    def CreateChunkUploadUrl(self, request: cpb.CreateChunkUploadUrlRequest,
                             context: grpc.ServicerContext) -> cpb.CreateChunkUploadUrlResponse:
        url = self._d.chunks.create_upload_url(principal(self._d, context),
                                               request.recording_id, request.part,
                                               request.content_md5 or None,
                                               request.size_bytes
                                               if request.HasField("size_bytes") else None)
        return cpb.CreateChunkUploadUrlResponse(upload_url=url.upload_url, method=url.method,
                                                headers=url.headers,
                                                expire_time=cv.ts(url.expires_at))


    @translate_errors
    def DeleteChunk(self, request: cpb.DeleteChunkRequest,
                    context: grpc.ServicerContext) -> cpb.DeleteChunkResponse:
        p = principal(self._d, context, allow_upload_token=True)
        left = cv.chunk_list_pb(self._d.chunks.delete(p, request.recording_id, request.part))
        return cpb.DeleteChunkResponse(chunks=left.chunks, missing_chunks=left.missing_chunks)


def _data(messages: Iterator[cpb.UploadChunkRequest]) -> Iterator[bytes]:
    for msg in messages:
        if msg.WhichOneof("content") != "data":
            raise invalid("data", "Only the first UploadChunk message may carry a header.")
        yield msg.data
