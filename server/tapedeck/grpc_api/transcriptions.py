"""TranscriptionService: authenticate, translate, call ``domain.transcriptions``. No rules
here: scopes, visibility and validation live in ``tapedeck.domain.transcriptions``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from tapedeck.auth import Principal
from tapedeck.clock import parse_iso
from tapedeck.domain import Domain
from tapedeck.domain.exports import paragraphs
from tapedeck.domain.idempotency import StoredResponse
from tapedeck.domain.search import SearchHit, SearchRequest
from tapedeck.domain.transcriptions import SpeakerOptions, Transcription, request_fingerprint
from tapedeck.errors import TapedeckError, error, invalid
from tapedeck.grpc_api import _convert as cv
from tapedeck.grpc_api._errors import log, to_status, translate_errors
from tapedeck.grpc_api.servicers import principal
from tapedeck.v1 import transcription_pb2 as pb
from tapedeck.v1 import transcription_pb2_grpc

SERVICES = (pb.DESCRIPTOR.services_by_name["TranscriptionService"].full_name,)


# -- conversions -------------------------------------------------------------------------
def word_pb(w: dict[str, Any]) -> pb.Word:
    out = pb.Word(word=w["word"], start_ms=w["start_ms"], end_ms=w["end_ms"],
                  confidence=w["confidence"])
    if w.get("speaker") is not None:
        out.speaker = w["speaker"]
    return out


def speaker_pb(s: dict[str, Any]) -> pb.Speaker:
    return pb.Speaker(label=s["label"], talk_time_ms=s["talk_time_ms"],
                      end_user_id=s.get("end_user_id") or "")


def speaker_options(request: pb.CreateTranscriptionRequest) -> SpeakerOptions:
    """The request's diarization options (unset fields: defaults)."""
    def opt(name: str) -> int | None:
        return int(getattr(request, name)) if request.HasField(name) else None  # type: ignore[arg-type]

    return SpeakerOptions(request.diarize if request.HasField("diarize") else True,
                          opt("min_speakers"), opt("max_speakers"), opt("speakers_expected"))


def segment_pb(s: dict[str, Any]) -> pb.Segment:
    out = pb.Segment(start_ms=s["start_ms"], end_ms=s["end_ms"], text=s["text"],
                     confidence=s["confidence"], words=[word_pb(w) for w in s["words"]])
    if s.get("speaker") is not None:
        out.speaker = s["speaker"]
    return out


def paragraph_pb(p: dict[str, Any]) -> pb.Paragraph:
    out = pb.Paragraph(start_ms=p["start_ms"], end_ms=p["end_ms"], text=p["text"],
                       first_segment=p["first_segment"], segment_count=p["segment_count"])
    if p.get("speaker") is not None:
        out.speaker = p["speaker"]
    return out


def transcription_pb(t: Transcription) -> pb.Transcription:
    """The proto form of the transcription object (empty strings for JSON nulls)."""
    out = pb.Transcription(
        id=t.id, recording_id=t.recording_id, status=cv.transcription_enum(t.status),  # type: ignore[arg-type]
        language=t.language or "", provider=t.provider, model=t.model or "",
        text=t.text or "", segments=[segment_pb(s) for s in t.segments],
        create_time=cv.ts(t.created_at), complete_time=cv.ts(t.completed_at),
        paragraphs=[paragraph_pb(p) for p in paragraphs(t.segments)])
    if t.duration_ms is not None:
        out.duration_ms = t.duration_ms
    if t.word_count is not None:
        out.word_count = t.word_count
    if t.live:
        out.live = True
        if t.covered_ms is not None:
            out.covered_ms = t.covered_ms
        if t.skipped_ms is not None:
            out.skipped_ms = t.skipped_ms
    if t.speakers is not None:
        out.diarized = True
        out.speakers.extend(speaker_pb(s) for s in t.speakers)
    err = t.error
    if err is not None:
        out.error.CopyFrom(pb.TranscriptionError(type=err["type"], message=err["message"],
                                                 reason=err.get("reason", "")))
    return out


_ORDERS = {pb.SEARCH_ORDER_UNSPECIFIED: None, pb.SEARCH_ORDER_RELEVANCE: "relevance",
           pb.SEARCH_ORDER_NEWEST: "newest"}


def search_request(r: pb.SearchTranscriptsRequest) -> SearchRequest:
    """The domain request of a SearchTranscripts call (empty strings = not given)."""
    if r.order not in _ORDERS:
        raise invalid("order", "order must be SEARCH_ORDER_RELEVANCE or SEARCH_ORDER_NEWEST.")
    return SearchRequest(
        q=r.query, order=_ORDERS[r.order], limit=cv.page_limit(r.page_size),
        cursor=r.page_token or None, device_id=r.device_id or None,
        end_user_id=r.end_user_id or None, speaker=r.speaker or None,
        since=cv.from_ts(r.since, r.HasField("since")),
        until=cv.from_ts(r.until, r.HasField("until")), metadata=dict(r.metadata))


def search_hit_pb(h: SearchHit) -> pb.SearchHit:
    out = pb.SearchHit(
        recording_id=h.recording_id, transcription_id=h.transcription_id,
        segment_index=h.segment_index, start_ms=h.start_ms, end_ms=h.end_ms, text=h.text,
        matches=[pb.MatchSpan(start=m.start, end=m.end) for m in h.matches],
        snippet=h.snippet, score=h.score, record_time=cv.ts(parse_iso(h.recorded_at)),
        device_id=h.device_id or "", end_user_id=h.end_user_id or "")
    if h.speaker is not None:
        out.speaker = h.speaker
    return out


# -- service -----------------------------------------------------------------------------
class TranscriptionServicer(transcription_pb2_grpc.TranscriptionServiceServicer):
    """tapedeck.v1.TranscriptionService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def GetTranscription(self, request: pb.GetTranscriptionRequest,
                         context: grpc.ServicerContext) -> pb.GetTranscriptionResponse:
        txn = self._d.transcriptions.get(principal(self._d, context), request.id)
        return pb.GetTranscriptionResponse(transcription=transcription_pb(txn))

    @translate_errors
    def CreateTranscription(self, request: pb.CreateTranscriptionRequest,
                            context: grpc.ServicerContext) -> pb.CreateTranscriptionResponse:
        p = principal(self._d, context)
        args = (request.recording_id, request.language or None, request.provider or None,
                speaker_options(request))
        txn = self._create_once(p, args, request.idempotency_key or None)
        return pb.CreateTranscriptionResponse(transcription=transcription_pb(txn))

    @translate_errors
    def SearchTranscripts(self, request: pb.SearchTranscriptsRequest,
                          context: grpc.ServicerContext) -> pb.SearchTranscriptsResponse:
        page = self._d.search.search(principal(self._d, context), search_request(request))
        return pb.SearchTranscriptsResponse(hits=[search_hit_pb(h) for h in page.data],
                                            next_page_token=page.next_cursor or "")

    def WatchTranscription(self, request: pb.WatchTranscriptionRequest,
                           context: grpc.ServicerContext,
                           ) -> Iterator[pb.WatchTranscriptionResponse]:
        """Server streaming over ``Transcriptions.watch``; ends when the client goes away."""
        stop = threading.Event()
        context.add_callback(stop.set)
        try:
            p = principal(self._d, context)
            for update in self._d.transcriptions.watch(p, request.id, stop=stop):
                msg = pb.WatchTranscriptionResponse(
                    segments=[segment_pb(s) for s in update.segments],
                    covered_ms=update.covered_ms)
                if update.transcription is not None:
                    msg.transcription.CopyFrom(transcription_pb(update.transcription))
                yield msg
        except TapedeckError as exc:  # as translate_errors does for unary methods
            context.abort_with_status(to_status(exc))
        except Exception:
            log.exception("unhandled error in WatchTranscription")
            context.abort_with_status(to_status(error("internal_error")))

    def _create_once(self, p: Principal,
                     args: tuple[str, str | None, str | None, SpeakerOptions],
                     key: str | None) -> Transcription:
        """Request (under the idempotency key, if one was sent: ``Idempotency.once``, shared
        with REST: same operation fingerprint); a replay rebuilds the first response."""
        made: list[Transcription] = []

        def call() -> StoredResponse:
            made.append(self._d.transcriptions.request(p, *args))
            return StoredResponse(201, made[0].to_json())

        outcome = self._d.idempotency.once(p, key, request_fingerprint(*args), call,
                                           key_field="idempotency_key")
        return made[0] if made else Transcription.from_json(outcome.response.body,
                                                            p.project_id)


def add_to_server(domain: Domain, server: grpc.Server) -> tuple[str, ...]:
    """Register TranscriptionService on ``server``; return its full name."""
    transcription_pb2_grpc.add_TranscriptionServiceServicer_to_server(
        TranscriptionServicer(domain), server)
    return SERVICES
